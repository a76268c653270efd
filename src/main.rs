//! The `kessai` binary: parse the command line, run the command, report how it ended.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = kessai::cli::Cli::parse();
    kessai_service::telemetry::init_logging_for(cli.command.is_service());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(kessai::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
