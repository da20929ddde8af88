//! egressd binary: argv → bootstrap → `app::run`.

use std::process::ExitCode;

use clap::Parser;
use egressd::cli::{check, Cli, Command};
use egressd::{config, routing};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `egressd` alone runs the example config, like `egressd run`.
    let command = match cli.command {
        Some(c) => c,
        None => match Cli::parse_from(["egressd", "run"]).command {
            Some(c) => c,
            None => return ExitCode::FAILURE,
        },
    };
    match command {
        Command::Version => {
            println!("egressd {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check(check_args) => {
            let args = &check_args.config;
            let bootstrap = match args.bootstrap() {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            let loaded = config::load_paths(&args.config, &bootstrap.default_namespace);
            match routing::compile(&loaded, &bootstrap) {
                Ok(snapshot) if check_args.explain => {
                    match egressd::cli::authz::explain(&snapshot, &bootstrap, &(&check_args).into()) {
                        Ok(text) => {
                            print!("{text}");
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("error: {e}");
                            ExitCode::FAILURE
                        }
                    }
                }
                Ok(snapshot) => {
                    print!("{}", check::render(&snapshot));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprint!("{}", check::render_diagnostics(&e.diagnostics));
                    let n = e.errors().count();
                    eprintln!("{n} error{}: nothing would be served", if n == 1 { "" } else { "s" });
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => match egressd::app::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
