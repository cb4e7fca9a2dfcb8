//! Exit codes (sysexits, as the README lists them) and configuration
//! errors as one line plus exit 78.

use stem::StemError;

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
