//! `xlb`: the operator's command-line client. This version validates configs; the commands
//! that talk to a running daemon (`status`, `lb list`, ...) come with its API.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// Command-line client of the xlb load balancer.
#[derive(Parser)]
#[command(name = "xlb", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate config files exactly as xlbd would: exit 0 if all are valid, 1 otherwise.
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { files } => {
            if xlb::check::check_files(&files, &mut std::io::stdout(), &mut std::io::stderr()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
