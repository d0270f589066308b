//! `tangle-collector`: the command line.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use tangle_collector::{config::Config, report, server};

// Spans are decoded on the receivers' threads and freed on the ingest
// thread; glibc's malloc spent an eighth of the collector's time on that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tangle's collector: takes OTLP spans from Tangle agents and any
/// OpenTelemetry-instrumented application, assembles traces, and reports the
/// couplings of a distributed monolith (/metrics, /api/findings).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The configuration file (TOML); every field has a default.
    #[arg(long, short, env = "TANGLE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The folder of the baseline of known chains (overrides `data_dir`).
    #[arg(long, env = "TANGLE_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// OTLP/gRPC address (overrides `otlp_grpc`; default 0.0.0.0:4317).
    #[arg(long, env = "TANGLE_OTLP_GRPC")]
    otlp_grpc: Option<std::net::SocketAddr>,
    /// OTLP/HTTP address (overrides `otlp_http`; default 0.0.0.0:4318).
    #[arg(long, env = "TANGLE_OTLP_HTTP")]
    otlp_http: Option<std::net::SocketAddr>,
    /// /metrics and /api address (overrides `http`; default 0.0.0.0:9464).
    #[arg(long, env = "TANGLE_HTTP")]
    http: Option<std::net::SocketAddr>,
    /// Trace window in milliseconds (overrides `trace_window_ms`).
    #[arg(long, env = "TANGLE_TRACE_WINDOW_MS")]
    trace_window_ms: Option<u64>,
    /// Seconds chains are learned before one is new (overrides
    /// `[thresholds] learning_seconds`; 0: every chain not in the baseline is new).
    #[arg(long, env = "TANGLE_LEARNING_SECONDS")]
    learning_seconds: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// Receive spans and serve findings (the default).
    Run,
    /// Print the configuration in effect, defaults included, and exit.
    CheckConfig,
    /// The coupling report of a running collector: each distributed-monolith
    /// symptom found, with its evidence.
    Report {
        /// The collector's /metrics and /api address.
        #[arg(long, default_value = "http://127.0.0.1:9464", env = "TANGLE_URL")]
        url: String,
        #[arg(long, value_enum, default_value = "text")]
        format: report::Format,
        /// The collector's API token (`[api] token`), if it has one.
        #[arg(long, env = "TANGLE_API_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tangle-collector: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Report { url, format, token }) = &cli.command {
        let token = token.as_deref();
        if *format == report::Format::Html {
            let snapshot = report::fetch_snapshot(url, token)?;
            print!("{}", tangle_collector::web::report_html(&snapshot)?);
        } else {
            let findings = report::fetch(url, token)?;
            print!("{}", report::render(&findings, *format));
        }
        return Ok(());
    }
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(d) = cli.data_dir {
        config.data_dir = d;
    }
    if let Some(a) = cli.otlp_grpc {
        config.otlp_grpc = a;
    }
    if let Some(a) = cli.otlp_http {
        config.otlp_http = a;
    }
    if let Some(a) = cli.http {
        config.http = a;
    }
    if let Some(w) = cli.trace_window_ms {
        config.trace_window_ms = w;
    }
    if let Some(s) = cli.learning_seconds {
        config.thresholds.learning_seconds = s;
    }
    if matches!(cli.command, Some(Command::CheckConfig)) {
        // Token files must be readable; an inline token is not printed.
        config.token()?;
        config.api_token()?;
        println!("{}", config.shown());
        return Ok(());
    }
    server::run_until_signalled(config)?;
    Ok(())
}
