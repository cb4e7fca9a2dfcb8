//! Output helpers: aligned tables (columns sized to their content, nothing
//! truncated), JSON, and the `--json` flag every listing shares. Human
//! tables and JSON are rendered from the same row structs.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

/// `--json`, flattened into every command that prints data.
#[derive(Args, Debug, Clone, Copy, Default)]
pub(crate) struct Format {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Format {
    /// Prints `value` as pretty JSON with `--json`; otherwise runs `human`,
    /// which prints what a person reads (a table or a sentence).
    pub(crate) fn print<T: Serialize + ?Sized>(
        self,
        value: &T,
        human: impl FnOnce(),
    ) -> anyhow::Result<()> {
        if self.json {
            print_json(value)
        } else {
            human();
            Ok(())
        }
    }
}

/// Writes one line to stdout. A closed pipe (`stem … | head`) ends the
/// process quietly with 0; any other write error with 70.
// A sanctioned exit (`clippy::exit` is denied elsewhere): output is the
// CLI's last step, and nowhere to report the failure remains.
#[allow(clippy::exit)]
pub(crate) fn write_line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(stem_service::exit::EXIT_SOFTWARE);
    }
}

/// `println!` that survives a closed pipe (see [`write_line`]).
macro_rules! outln {
    () => {
        $crate::output::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Column alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// A table: a header row and rows of cells, rendered with every column as
/// wide as its widest cell and two spaces between columns.
#[derive(Debug, Default)]
pub(crate) struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with left-aligned `headers`.
    pub(crate) fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            align: vec![Align::Left; headers.len()],
            rows: Vec::new(),
        }
    }

    /// A `Field`/`Value` table of one record, a row per field.
    pub(crate) fn fields<'a>(fields: impl IntoIterator<Item = (&'a str, String)>) -> Self {
        let mut t = Table::new(&["Field", "Value"]);
        for (k, v) in fields {
            t.row(vec![k.into(), v]);
        }
        t
    }

    /// Right-aligns the columns at `columns` (numbers).
    pub(crate) fn right(mut self, columns: &[usize]) -> Self {
        for &c in columns {
            if let Some(a) = self.align.get_mut(c) {
                *a = Align::Right;
            }
        }
        self
    }

    /// Appends a row (missing cells are empty, extra cells are dropped).
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text: header, a dashed rule, rows; no trailing spaces.
    pub(crate) fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .chain(std::iter::once(self.headers[c].chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let line = |cells: &[String], out: &mut String| {
            let mut text = String::new();
            for (c, cell) in cells.iter().enumerate() {
                if c > 0 {
                    text.push_str("  ");
                }
                let pad = widths[c].saturating_sub(cell.chars().count());
                match self.align[c] {
                    Align::Left => {
                        text.push_str(cell);
                        text.push_str(&" ".repeat(pad));
                    }
                    Align::Right => {
                        text.push_str(&" ".repeat(pad));
                        text.push_str(cell);
                    }
                }
            }
            let _ = writeln!(out, "{}", text.trim_end());
        };
        line(&self.headers, &mut out);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&rule, &mut out);
        for r in &self.rows {
            line(r, &mut out);
        }
        out
    }

    /// Prints the table to stdout.
    pub(crate) fn print(&self) {
        let text = self.render();
        outln!("{}", text.trim_end_matches('\n'));
    }
}

/// Prints `value` as pretty JSON (two-space indent) to stdout.
pub(crate) fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `-` for an absent value.
pub(crate) fn or_dash(v: Option<impl ToString>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// `items` joined by `sep`, or `-` when there are none.
pub(crate) fn join_or_dash(items: &[String], sep: &str) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(sep)
    }
}

/// `yes` or `no`.
pub(crate) fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// A duration as the shortest of `<n>ms`, `<n>s`, `<n>m`, `<n>h` that is
/// exact (`1500ms`, `5s`, `2m`).
pub(crate) fn short_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// An age such as `3s ago`, `2m ago`, `in 4s` for an epoch-ms time.
pub(crate) fn age(at_ms: i64, now_ms: i64) -> String {
    let delta = now_ms - at_ms;
    let abs = delta.unsigned_abs();
    let text = if abs < 1000 {
        format!("{abs}ms")
    } else if abs < 120_000 {
        format!("{}s", abs / 1000)
    } else if abs < 7_200_000 {
        format!("{}m", abs / 60_000)
    } else {
        format!("{}h", abs / 3_600_000)
    };
    if delta >= 0 {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

/// `n thing` / `n things`.
pub(crate) fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell() {
        let mut t = Table::new(&["ID", "Count"]).right(&[1]);
        t.row(vec!["a-very-long-schedule-id".into(), "7".into()]);
        t.row(vec!["x".into(), "1234".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID                       Count");
        assert_eq!(lines[1], "-----------------------  -----");
        assert_eq!(lines[2], "a-very-long-schedule-id      7");
        assert_eq!(lines[3], "x                         1234");
    }

    #[test]
    fn durations_are_short_and_exact() {
        assert_eq!(short_duration(Duration::from_secs(5)), "5s");
        assert_eq!(short_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(short_duration(Duration::from_secs(120)), "2m");
        assert_eq!(short_duration(Duration::ZERO), "0s");
        assert_eq!(age(0, 3_500), "3s ago");
        assert_eq!(age(10_000, 6_000), "in 4s");
    }

    #[test]
    fn empty_lists_are_a_dash() {
        assert_eq!(join_or_dash(&[], ", "), "-");
        assert_eq!(join_or_dash(&["a".into(), "b".into()], ","), "a,b");
    }
}
