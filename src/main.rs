//! The `kessai` binary: parse the command line, run the command, report how it ended.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = kessai::cli::Cli::parse();
    kessai_service::telemetry::init_logs(cli.command.is_service(), cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // Inside the runtime: the gRPC exporter needs one.
        let traces = kessai_service::telemetry::init_traces(&cli.command.service_name())?;
        let result = kessai::cli::run(cli).await;
        traces.shutdown();
        result
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
