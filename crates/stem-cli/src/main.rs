//! `stem`: the operator CLI. This slice has `stem dev` (the whole stack in
//! one process) and `stem keys` (signing key generation); the other
//! command groups of CONTRACT §7 follow.

mod dev;
mod keys;

use clap::{Parser, Subcommand};

/// Stem operator CLI.
#[derive(Parser, Debug)]
#[command(name = "stem", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the enqueue API and one worker per demo queue in one process.
    Dev(dev::DevArgs),
    /// Print ready-to-paste STEM_SIGNING_* lines with fresh keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                stem::runtime::EXIT_USAGE
            } else {
                0
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let code = match cli.command {
        Command::Keys(k) => keys::run(k),
        Command::Dev(args) => {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    std::process::exit(stem::runtime::EXIT_SOFTWARE);
                }
            };
            rt.block_on(dev::run(args))
        }
    };
    std::process::exit(code);
}
