//! Logging. `RUST_LOG` overrides the default filter; sqlx logs every statement at
//! INFO, so it is held at WARN.

use tracing_subscriber::EnvFilter;

/// Quiet logging (warn), for commands that print a report, and tests.
pub fn init_logging() {
    init_logging_for(false);
}

/// `services`: long-running services log their lifecycle (info); one-shot commands
/// whose output is a report stay quiet (warn).
pub fn init_logging_for(services: bool) {
    let default = if services {
        "info,sqlx=warn,sea_orm=warn"
    } else {
        "warn,sqlx=warn,sea_orm=warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
