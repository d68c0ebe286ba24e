//! The `mcpd` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Management Control Panel daemon: schedules pipelines onto pulling agents.
#[derive(Debug, Parser)]
#[command(name = "mcpd", version, about)]
pub struct Cli {
    /// Extra configuration file layered over the built-in defaults (environment variables
    /// MCPD__SECTION__KEY override both).
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Clone, Copy, Subcommand, PartialEq, Eq)]
pub enum Command {
    /// Run the daemon until SIGTERM or SIGINT (the default).
    Run,
    /// Validate the configuration and print it, passwords masked; writes nothing.
    CheckConfig,
    /// Create or upgrade the store's collections and indexes, then exit.
    Migrate,
}
