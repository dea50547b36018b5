//! The command line: each subcommand defined once with its help, then dispatched. Commands
//! that talk to a running KUBE go through `client`.

mod app;
mod client;
mod local;
mod process;
mod space;

pub use local::load as local_load;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "kube",
    version,
    about = "One binary hosting local-first, peer-to-peer apps"
)]
pub struct Cli {
    /// The config file (default: none, the embedded defaults). KUBE_<SECTION>_<KEY> variables
    /// override it.
    #[arg(short = 'c', long = "config", global = true, env = "KUBE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Sign admin requests with this operator key (PKCS#8 PEM, listed in admin.operators)
    /// instead of using the data dir's admin token.
    #[arg(long = "key", global = true, env = "KUBE_KEY")]
    pub key: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run every enabled service in this process until SIGINT or SIGTERM.
    Start,
    /// Write a commented kube.yml for a domain.
    Init {
        /// The domain to serve.
        #[arg(long, default_value = "localhost")]
        domain: String,
        /// Where to write it.
        #[arg(short, long, default_value = "kube.yml")]
        output: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Validate the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Ask the running KUBE for its services, certificates and apps.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Publish and manage app bundles.
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
    /// Print the local CA certificate (PEM), to trust it in a browser or OS.
    Trust,
    /// Write a consistent snapshot of the running KUBE's data dir (identity, TLS, apps, DNS
    /// records, spaces) to FILE (.tar.gz, 0600: it holds private keys).
    Backup { file: PathBuf },
    /// Bring a backup back into an empty (or new) data dir; KUBE must not be running on it.
    Restore { file: PathBuf },
    /// Make the running KUBE read its configuration again (as SIGHUP does); prints what
    /// applied and what waits for a restart, or the configuration's problems (then nothing
    /// is applied). Exits 1 when a section's new values were refused.
    Reload,
    /// Exit 0 when the running KUBE answers /healthz (with --ready: /readyz), else 1. For
    /// container health checks; needs no token.
    Health {
        #[arg(long)]
        ready: bool,
    },
    /// KUBE's own key (did:key) and its operators; `new FILE` makes an operator key.
    Identity {
        #[command(subcommand)]
        command: Option<IdentityCommand>,
    },
    /// The spaces ECHO replicates: list, show, query, export, import.
    Space {
        #[command(subcommand)]
        command: SpaceCommand,
    },
    /// Certificates: what is served, and renewal.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// The supervised processes: list (as `kube ps`), show, start, stop, restart.
    Process {
        #[command(subcommand)]
        command: ProcessCommand,
    },
    /// The supervised processes, one line each (`kube process list`).
    Ps,
    /// A supervised process's log (stdout and stderr, timestamped).
    Logs {
        name: String,
        /// Only lines since then: RFC 3339, or a duration ago (30s, 10m, 2h, 1d).
        #[arg(long)]
        since: Option<String>,
        /// At most this many lines (the last ones).
        #[arg(short = 'n', long, default_value_t = 200)]
        lines: usize,
        /// Keep printing new lines until interrupted.
        #[arg(short, long)]
        follow: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProcessCommand {
    /// Name, state, pid, restarts and last exit of each.
    List,
    /// One process, as JSON.
    Show { name: String },
    /// Start a stopped process (or one waiting to restart) now.
    Start { name: String },
    /// Stop it (its stop signal to its process group, KILL after its grace period).
    Stop { name: String },
    /// Stop it and start it again.
    Restart { name: String },
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Names, issuer, expiry, and ACME's state (last error, next attempt).
    List,
    /// Ask for a new certificate now.
    Renew,
}

#[derive(Subcommand, Debug)]
pub enum SpaceCommand {
    /// Every space: key, documents, members, size, last change.
    List,
    /// One space: members and roles, devices, documents with type, size and last change.
    Show { space: String },
    /// The objects of a space of one type, optionally filtered by properties.
    Query {
        space: String,
        /// The object type.
        #[arg(long = "type")]
        kind: String,
        /// prop=value (repeatable: all must match).
        #[arg(long = "where")]
        wheres: Vec<String>,
    },
    /// Write the space (its documents and credentials) to FILE (JSON).
    Export { space: String, file: PathBuf },
    /// Bring an exported space in; its documents and credentials are verified first.
    Import { file: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum IdentityCommand {
    /// Write a new Ed25519 key (PKCS#8 PEM, 0600) to FILE and print its did:key, to list in
    /// admin.operators and use with --key.
    New { file: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print every problem with file:line:column and the key; exit 1 if there is any.
    Check,
}

#[derive(Subcommand, Debug)]
pub enum AppCommand {
    /// Upload a bundle (a directory or a .tar.gz) and make it the app's current version.
    Publish {
        /// The bundle: a directory or a .tar.gz file.
        bundle: PathBuf,
        /// The app name (a DNS label): served at https://<name>.<domain>/.
        #[arg(long)]
        name: String,
    },
    /// List apps with their versions.
    List,
    /// Make an earlier version current (default: the one before the current).
    Rollback { name: String, version: Option<u64> },
    /// Remove an app and all its versions.
    Remove { name: String },
}

/// Runs a command other than `start`; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Start => unreachable!("start is dispatched by main"),
        Command::Init {
            domain,
            output,
            force,
        } => local::init(&domain, &output, force).map(|_| 0),
        Command::Config {
            command: ConfigCommand::Check,
        } => Ok(local::config_check(cli.config.as_deref())),
        Command::Trust => local::trust(cli.config.as_deref()).map(|_| 0),
        Command::Identity {
            command: Some(IdentityCommand::New { file }),
        } => local::new_key(&file).map(|_| 0),
        Command::Identity { command: None } => local::identity(cli.config.as_deref()).map(|_| 0),
        Command::Health { ready } => Ok(client::health(cli.config.as_deref(), ready).await),
        Command::Backup { file } => {
            let c = client::Client::connect(cli.config.as_deref(), cli.key.as_deref()).await?;
            client::backup(&c, &file).await.map(|_| 0)
        }
        Command::Restore { file } => local::restore(cli.config.as_deref(), &file).map(|_| 0),
        Command::Reload => {
            let c = client::Client::connect(cli.config.as_deref(), cli.key.as_deref()).await?;
            client::reload(&c).await.map(|_| 0)
        }
        Command::Status { json } => {
            let c = client::Client::connect(cli.config.as_deref(), cli.key.as_deref()).await?;
            client::status(&c, json).await.map(|_| 0)
        }
        Command::Cert { command } => {
            let c = client::Client::connect(cli.config.as_deref(), cli.key.as_deref()).await?;
            client::cert(&c, command).await.map(|_| 0)
        }
        Command::Space { command } => {
            let c = client::Client::connect(cli.config.as_deref(), cli.key.as_deref()).await?;
            space::run(&c, command).await.map(|_| 0)
        }
        Command::App { command } => {
            let c = client::Client::connect(cli.config.as_deref(), cli.key.as_deref()).await?;
            app::run(&c, command).await.map(|_| 0)
        }
        Command::Process { command } => {
            let c = client::Client::connect(cli.config.as_deref(), cli.key.as_deref()).await?;
            process::run(&c, command).await.map(|_| 0)
        }
        Command::Ps => {
            let c = client::Client::connect(cli.config.as_deref(), cli.key.as_deref()).await?;
            process::list(&c).await.map(|_| 0)
        }
        Command::Logs {
            name,
            since,
            lines,
            follow,
        } => {
            let c = client::Client::connect(cli.config.as_deref(), cli.key.as_deref()).await?;
            process::logs(&c, &name, since.as_deref(), lines, follow)
                .await
                .map(|_| 0)
        }
    }
}
