//! `mcpd`: parse the command line, load the configuration, set up tracing, run, map the outcome
//! to an exit code (0 ok, 1 runtime failure, 2 bad configuration or usage).

mod cli;

use std::process::ExitCode;

use clap::Parser as _;
use mcpd::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

/// Exit status for an invalid configuration (same as clap's usage errors).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Validate before anything touches the disk or the network.
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("mcpd: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let command = cli.command.unwrap_or(Command::Run);
    if command == Command::CheckConfig {
        print!("{}", config.masked_toml());
        return ExitCode::SUCCESS;
    }
    init_tracing(&config);
    let result = actix_web::rt::System::new().block_on(async move {
        match command {
            Command::Run => mcpd::daemon::run(config, mcpd::shutdown::shutdown_signal()).await,
            Command::Migrate => mcpd::daemon::migrate(&config).await,
            Command::CheckConfig => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(cause = %format!("{err:#}"), "mcpd failed");
            eprintln!("mcpd: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `RUST_LOG`, when set and valid, takes precedence over `log.level`.
fn init_tracing(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
