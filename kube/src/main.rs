//! `kube`: one process hosting local-first apps. This file only parses the command line,
//! sets up logging and the runtime, and maps errors to exit codes.

mod admin;
mod apps;
mod backup;
mod cli;
mod datadir;
mod dns;
mod http;
mod identity;
mod metrics;
mod service;
mod signaling;
mod supervisor;
mod tls;
mod turn;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kube: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        cli::Command::Start => match cli::local_load(cli.config.as_deref()) {
            Ok(loaded) => {
                init_logging(&loaded.config.log);
                runtime.block_on(supervisor::run(loaded)).map(|_| 0)
            }
            Err(e) => Err(e),
        },
        _ => {
            init_logging(&config::Log {
                level: "warn".into(),
                format: config::LogFormat::Text,
            });
            runtime.block_on(cli::run(cli))
        }
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("kube: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(log: &config::Log) {
    let filter = EnvFilter::try_from_env("KUBE_LOG")
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Text => builder.init(),
    }
}
