mod cli;

use broker::config::LogFormat;
use broker::{Config, Server};
use clap::Parser;
use std::path::PathBuf;

/// mimalloc instead of glibc's malloc: the hot paths allocate and free many
/// small objects across threads (frames, messages, deliveries), where glibc
/// spent ~18 % of the broker's CPU in a stream benchmark profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An AMQP 0-9-1 message broker compatible with RabbitMQ clients. Without
/// a subcommand it runs the broker.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file (default: ./broker.toml if present).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<cli::Command>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    if let Some(command) = cli.command {
        if let Err(message) = cli::run(command, &config) {
            eprintln!("error: {message}");
            std::process::exit(1);
        }
        return Ok(());
    }
    config.check_https()?;
    init_logging(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Signal handlers before the listeners: a SIGTERM that arrives as
        // soon as the ports accept still stops the broker cleanly.
        let shutdown = shutdown_signal()?;
        let server = Server::bind(config).await?;
        server.run(shutdown).await;
        Ok(())
    })
}

/// Log lines go to stdout: `text` is coloured only when stdout is a
/// terminal (a file or a pipe gets no escape codes), `json` is one object
/// per line with the message at the top level.
fn init_logging(log: &broker::config::LogConfig) {
    use std::io::IsTerminal;
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| log.level.clone());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stdout);
    match log.format {
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).init(),
        LogFormat::Json => builder.with_ansi(false).json().flatten_event(true).init(),
    }
}

/// Resolves at SIGTERM or SIGINT; the handlers are installed at once.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
