//! The `portcullis` command: parses the command line, sets up logging and runs the
//! proxy or checks a configuration.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand, ValueEnum};
use portcullis::Config;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's malloc: a session allocates and frees the same few
/// buffers, and glibc gave the freed memory back to the kernel (madvise) only to
/// fault it in again for the next session.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An SMTP proxy that runs filters at every stage of each session.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run the proxy until SIGTERM or SIGINT.
    Run {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and exit (non-zero on error, naming key and line).
    Check {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file as `check` does, then ask the proxy running with it
    /// to reload it through `server.control_socket`, and print its answer (non-zero
    /// when it refused: it then runs on as before).
    Reload {
        /// The configuration file the running proxy was started with.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a listener's plugin chain over a message file, offline, and print each
    /// plugin's verdict per stage and the resulting envelope and message; or, with
    /// --record, run audit records through the chains configured now and print where
    /// the verdicts differ (exit status 1 if any does).
    Replay {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The listener whose chain runs (with --record: instead of each record's).
        #[arg(long, required_unless_present = "record")]
        listener: Option<String>,
        /// The envelope sender ("" for the null reverse-path).
        #[arg(long, required_unless_present = "record", conflicts_with = "record")]
        from: Option<String>,
        /// An envelope recipient (repeat for several).
        #[arg(long, required_unless_present = "record", conflicts_with = "record")]
        to: Vec<String>,
        /// A file of audit records (`[audit] path`, one JSON record per line) to
        /// replay instead of one message.
        #[arg(long)]
        record: Option<PathBuf>,
        /// The client address the plugins see.
        #[arg(long, default_value = "192.0.2.1")]
        client_ip: std::net::IpAddr,
        /// The HELO name the plugins see.
        #[arg(long, default_value = "replay.invalid")]
        helo: String,
        /// Replay as a client authenticated with this login (runs the AUTH hook).
        #[arg(long)]
        login: Option<String>,
        /// The message, as an .eml file (with --record: optional, replayed as each
        /// record's message, which records do not keep).
        #[arg(required_unless_present = "record")]
        message: Option<PathBuf>,
    },
    /// Read a password on standard input and print an Argon2id hash of it for a
    /// credentials file line (`login:HASH`).
    HashPassword,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn init_logging(format: LogFormat) {
    // RUST_LOG overrides the default level, e.g. RUST_LOG=portcullis=debug.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: a log file or journald must not fill with escape codes.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|error| {
        eprintln!("{}: {error}", path.display());
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Commands::Check { config } => match load(&config) {
            Ok(config) => check(&config),
            Err(code) => code,
        },
        Commands::Replay {
            config,
            listener,
            from,
            to,
            record,
            client_ip,
            helo,
            login,
            message,
        } => {
            let config = match load(&config) {
                Ok(config) => config,
                Err(code) => return code,
            };
            init_logging(cli.log_format);
            let message = match message.map(|path| std::fs::read(&path).map_err(|e| (path, e))) {
                None => None,
                Some(Ok(message)) => Some(message),
                Some(Err((path, error))) => {
                    eprintln!("{}: {error}", path.display());
                    return ExitCode::from(2);
                }
            };
            if let Some(records) = record {
                return replay_records(&config, &records, listener.as_deref(), message.as_deref());
            }
            let input = portcullis::replay::ReplayInput {
                listener: listener.expect("required without --record"),
                client_ip,
                helo,
                login,
                from: from.expect("required without --record"),
                to,
                message: message.expect("required without --record"),
            };
            replay(&config, input)
        }
        Commands::Reload { config: path } => match load(&path) {
            Ok(config) => match check(&config) {
                ExitCode::SUCCESS => reload(&path, &config),
                failed => failed,
            },
            Err(code) => code,
        },
        Commands::HashPassword => hash_password(),
        Commands::Run { config } => {
            let config = match load(&config) {
                Ok(config) => config,
                Err(code) => return code,
            };
            init_logging(cli.log_format);
            run(config)
        }
    }
}

/// Loads and instantiates every plugin and prints each one's hooks, and what the
/// configuration has that is valid but doubtful.
fn check(config: &Config) -> ExitCode {
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    // The store as configured (a Redis URL is parsed here, connected to on first
    // use), so a bad `[kv]` fails here as it would at start.
    let loaded = match block_on(1, async {
        let kv = portcullis::kv::KvStore::new(&config.kv)
            .map_err(portcullis::startup::StartError::Kv)?;
        portcullis::startup::prepare(
            config,
            Arc::new(portcullis::dns::Resolver::new(&config.dns)),
            Arc::new(kv),
        )
        .await
    }) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    match loaded {
        Ok(prepared) => {
            let plugins = prepared.plugins;
            for (name, plugin) in &plugins {
                let instances = if plugin.is_shared() {
                    "shared by sessions"
                } else {
                    "one per session"
                };
                println!(
                    "plugin {name}: hooks {:?}, instances {instances}",
                    plugin.hooks
                );
            }
            for (name, milter) in &config.milters {
                let action = match milter.default_action {
                    portcullis::config::OnError::Continue => "accept",
                    portcullis::config::OnError::Tempfail => "tempfail",
                    portcullis::config::OnError::Reject => "reject",
                };
                println!(
                    "milter {name}: {}, default_action {action} (check does not connect to it)",
                    milter.address
                );
            }
            let milters = match config.milters.len() {
                0 => String::new(),
                count => format!(", {count} milter(s)"),
            };
            println!(
                "configuration ok: {} listener(s), {} plugin(s){milters}",
                config.listeners.len(),
                plugins.len()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(2)
        }
    }
}

/// Reads one line (the password) from standard input and prints its hash.
fn reload(path: &std::path::Path, config: &Config) -> ExitCode {
    use portcullis::control::{ReloadAnswer, ask_reload};
    let Some(socket) = &config.server.control_socket else {
        eprintln!(
            "{}: server.control_socket is not set: set it (and restart), or send the proxy SIGHUP (systemctl reload portcullis), which reloads without an answer",
            path.display()
        );
        return ExitCode::from(2);
    };
    match block_on(1, ask_reload(socket)) {
        Ok(Ok(ReloadAnswer::Done(summary))) => {
            println!("reloaded: {summary}");
            ExitCode::SUCCESS
        }
        Ok(Ok(ReloadAnswer::Refused(reason))) => {
            eprintln!("the running proxy refused the reload and runs on as before: {reason}");
            ExitCode::FAILURE
        }
        Ok(Err(error)) => {
            eprintln!("{error} (is the proxy running with this configuration?)");
            ExitCode::FAILURE
        }
        Err(code) => code,
    }
}

fn hash_password() -> ExitCode {
    let mut password = String::new();
    if let Err(error) = std::io::stdin().read_line(&mut password) {
        eprintln!("cannot read the password: {error}");
        return ExitCode::from(2);
    }
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("empty password");
        return ExitCode::from(2);
    }
    match portcullis::auth::credentials::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cannot hash: {error}");
            ExitCode::from(2)
        }
    }
}

/// Runs `portcullis replay` and prints its report.
fn replay(config: &Config, input: portcullis::replay::ReplayInput) -> ExitCode {
    let report = match block_on(1, portcullis::replay::replay(config, input)) {
        Ok(report) => report,
        Err(code) => return code,
    };
    match report {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(2)
        }
    }
}

/// `portcullis replay --record FILE`: exit status 0 if every record's verdicts are
/// the same now, 1 if any differs, 2 on errors (as diff(1)).
fn replay_records(
    config: &Config,
    path: &std::path::Path,
    listener: Option<&str>,
    message: Option<&[u8]>,
) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("{}: {error}", path.display());
            return ExitCode::from(2);
        }
    };
    let mut records = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<portcullis::audit::Record>(line) {
            Ok(record) => records.push(record),
            Err(error) => {
                eprintln!(
                    "{} line {}: not an audit record: {error}",
                    path.display(),
                    number + 1
                );
                return ExitCode::from(2);
            }
        }
    }
    let future = portcullis::replay::replay_records(config, &records, listener, message);
    match block_on(1, future) {
        Ok(Ok(report)) => {
            print!("{}", report.text);
            if report.differing == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Ok(Err(error)) => {
            eprintln!("{error}");
            ExitCode::from(2)
        }
        Err(code) => code,
    }
}

/// Runs `future` on the tokio runtime `server.worker_threads` asks for; `Err` if the
/// runtime cannot start.
fn block_on<F: std::future::Future>(
    worker_threads: usize,
    future: F,
) -> Result<F::Output, ExitCode> {
    let mut builder = match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if worker_threads > 1 {
        builder.worker_threads(worker_threads);
    }
    match builder.enable_all().build() {
        Ok(runtime) => Ok(runtime.block_on(future)),
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            Err(ExitCode::FAILURE)
        }
    }
}

fn run(config: Config) -> ExitCode {
    let workers = config.server.worker_threads;
    match block_on(workers, portcullis::run(config, shutdown_signal())) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
        Err(code) => code,
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate =
        signal(SignalKind::terminate()).expect("cannot install the SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
