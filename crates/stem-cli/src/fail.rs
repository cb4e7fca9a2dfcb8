//! Exit codes (README "Exit codes") and how an error becomes one: commands return
//! `anyhow::Result<i32>`; an error is printed as one `error: …` line on
//! stderr and mapped to its code here.

use stem::StemError;
use stem_service::exit::{
    EXIT_CONFIG, EXIT_DATAERR, EXIT_SOFTWARE, EXIT_TEMPFAIL, EXIT_UNAVAILABLE, EXIT_USAGE,
};

/// The exit codes a command can end with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// 1: the awaited task failed or was cancelled (`task wait`).
    TaskFailed,
    /// 64: usage (bad flags, a destructive command without `--yes`).
    Usage,
    /// 65: bad input data (unknown id, invalid file or JSON).
    Data,
    /// 69: Redis unavailable.
    Unavailable,
    /// 70: internal error.
    Software,
    /// 75: nobody answered / timed out.
    TempFail,
    /// 78: configuration.
    Config,
}

impl Exit {
    /// The process exit code.
    pub(crate) fn code(self) -> i32 {
        match self {
            Exit::TaskFailed => 1,
            Exit::Usage => EXIT_USAGE,
            Exit::Data => EXIT_DATAERR,
            Exit::Unavailable => EXIT_UNAVAILABLE,
            Exit::Software => EXIT_SOFTWARE,
            Exit::TempFail => EXIT_TEMPFAIL,
            Exit::Config => EXIT_CONFIG,
        }
    }
}

/// An error that carries its exit code.
#[derive(Debug)]
pub(crate) struct Fail {
    pub exit: Exit,
    pub message: String,
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Fail {}

/// An error ending the command with `exit`.
pub(crate) fn fail(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Fail {
        exit,
        message: message.into(),
    })
}

/// Exit 65 with the library's message (without its `invalid argument: `
/// prefix).
pub(crate) fn bad_input(e: &StemError) -> anyhow::Error {
    let text = e.to_string();
    let text = text
        .strip_prefix("invalid argument: ")
        .map(str::to_string)
        .unwrap_or(text);
    fail(Exit::Data, text)
}

/// Exit 64 unless `yes`: destructive commands need `--yes`.
pub(crate) fn require_yes(yes: bool, what: &str) -> anyhow::Result<()> {
    if yes {
        Ok(())
    } else {
        Err(fail(
            Exit::Usage,
            format!("{what} is destructive: pass --yes to confirm (nothing was changed)"),
        ))
    }
}

/// The exit code and the one line to print for `err`.
/// `targets` names the stores this invocation talks to (for the
/// "Redis unavailable" line).
pub(crate) fn classify(err: &anyhow::Error, targets: &str) -> (i32, String) {
    if let Some(f) = err.chain().find_map(|c| c.downcast_ref::<Fail>()) {
        // Context added above the Fail is kept in the message.
        return (f.exit.code(), format!("{err:#}"));
    }
    if let Some(e) = err.chain().find_map(|c| c.downcast_ref::<StemError>()) {
        if e.is_unavailable() {
            return (
                EXIT_UNAVAILABLE,
                format!(
                    "Redis unavailable at {}: {e} (is it running? check STEM_BROKER_URL)",
                    targets
                ),
            );
        }
        let code = match e {
            StemError::Config { .. } | StemError::Tls(_) => EXIT_CONFIG,
            StemError::InvalidArgument(_)
            | StemError::UnknownTask(_)
            | StemError::Malformed(_)
            | StemError::Json(_)
            | StemError::Signature(_) => EXIT_DATAERR,
            StemError::WaitTimedOut(_) => EXIT_TEMPFAIL,
            StemError::Redis(_) | StemError::BrokenQueue { .. } | StemError::Internal(_) => {
                EXIT_SOFTWARE
            }
        };
        return (code, format!("{err:#}"));
    }
    (EXIT_SOFTWARE, format!("{err:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_contract() {
        let usage = fail(Exit::Usage, "x");
        assert_eq!(classify(&usage, "redis://test").0, 64);
        let data = anyhow::Error::new(StemError::InvalidArgument("bad".into()));
        assert_eq!(classify(&data, "redis://test").0, 65);
        let wrapped = anyhow::Error::new(StemError::UnknownTask("t".into())).context("enqueue");
        assert_eq!(classify(&wrapped, "redis://test").0, 65);
        let refused = anyhow::Error::new(StemError::Redis(
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into(),
        ));
        let (code, line) = classify(&refused, "redis://test");
        assert_eq!(code, 69);
        assert!(
            line.starts_with("Redis unavailable at redis://test: "),
            "{line}"
        );
        let waited = anyhow::Error::new(StemError::WaitTimedOut("task t".into()));
        assert_eq!(classify(&waited, "redis://test").0, 75);
        assert_eq!(classify(&anyhow::anyhow!("boom"), "redis://test").0, 70);
    }
}
