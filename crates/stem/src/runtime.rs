//! Process life-cycle helpers shared by the binaries: the exit codes of
//! CONTRACT §1/§7, configuration errors as one line plus exit 78, and a
//! cancellation token fired by SIGTERM or SIGINT.

use tokio_util::sync::CancellationToken;

use crate::error::StemError;

/// Exit code for invalid configuration (sysexits `EX_CONFIG`).
pub const EXIT_CONFIG: i32 = 78;
/// Exit code for bad usage.
pub const EXIT_USAGE: i32 = 64;
/// Exit code for bad input data.
pub const EXIT_DATAERR: i32 = 65;
/// Exit code when Redis is unavailable.
pub const EXIT_UNAVAILABLE: i32 = 69;
/// Exit code for an internal error.
pub const EXIT_SOFTWARE: i32 = 70;
/// Exit code when nobody answered.
pub const EXIT_TEMPFAIL: i32 = 75;

/// Returns the value, or prints `configuration error: <VARIABLE>: <why>`
/// and exits 78.
pub fn config_or_exit<T>(result: Result<T, StemError>) -> T {
    match result {
        Ok(v) => v,
        Err(e) => {
            eprintln!("configuration error: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    }
}

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        t.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
