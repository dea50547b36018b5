//! `kube`: one process hosting local-first apps. This file only parses the command line,
//! sets up logging and the runtime, and maps errors to exit codes.

mod admin;
mod apps;
mod backup;
mod cli;
mod datadir;
mod dns;
#[cfg(test)]
mod fuzz;
mod http;
mod identity;
mod metrics;
mod processes;
mod replica;
mod service;
mod signaling;
mod storage;
mod supervisor;
mod tls;
mod turn;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

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
                let log = init_logging(&loaded.config.log);
                runtime.block_on(supervisor::run(loaded, log)).map(|_| 0)
            }
            Err(e) => Err(e),
        },
        _ => {
            let _ = init_logging(&config::Log {
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

/// Sets up logging; the returned control changes the level while running (`log.level` on
/// reload), unless `KUBE_LOG` fixes it.
fn init_logging(log: &config::Log) -> supervisor::LogLevel {
    let fixed = std::env::var("KUBE_LOG").ok().filter(|f| !f.is_empty());
    let filter = fixed
        .as_deref()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(quiet(filter));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = Registry::default().with(filter);
    match log.format {
        config::LogFormat::Json => registry.with(fmt.json()).init(),
        config::LogFormat::Text => registry.with(fmt).init(),
    }
    Box::new(move |level: &str| {
        if fixed.is_some() {
            return Err("KUBE_LOG is set and takes precedence over log.level".into());
        }
        let next = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(quiet(next)).map_err(|e| e.to_string())
    })
}

/// The STUN codec warns about every malformed packet it parses: that volume is the
/// sender's to choose, so below errors it stays out of the log (the turn service counts
/// refusals in metrics instead).
fn quiet(filter: EnvFilter) -> EnvFilter {
    let mut filter = filter;
    for target in ["stun_types", "turn_types"] {
        if let Ok(d) = format!("{target}=error").parse() {
            filter = filter.add_directive(d);
        }
    }
    filter
}
