//! Schedule specs: `every:<n>[ms|s|m|h|d]` intervals and cron expressions
//! (5 fields, or 6 with seconds first), and the slot grid they define.
//!
//! A spec never depends on when a firing happened, only on the grid:
//!
//! - **`every:`** slots are `anchor + k·period` for every integer `k`. The
//!   anchor is the instant the entry was created (or its spec, time zone or
//!   enabled flag last changed), so a period never drifts: the slot after
//!   `s` is always `s + period`, however late `s` was dispatched.
//! - **cron** slots are the wall-clock times the expression matches in the
//!   entry's IANA time zone (default UTC), evaluated by [`croner`]. Across a
//!   daylight-saving change (tested in this module):
//!   - *skipped hour* (spring forward): a fixed-time job whose time does not
//!     exist that day (`30 2 * * *` in Europe/Berlin on the last Sunday of
//!     March) runs once at the first instant after the gap (03:00 local);
//!     interval/wildcard jobs (`*/15 * * * *`) simply have no slots in the
//!     missing hour;
//!   - *repeated hour* (fall back): a fixed-time job runs once, at the first
//!     (summer-time) occurrence; interval/wildcard jobs run in both
//!     occurrences of the hour (they follow real elapsed time).
//!
//! [`Spec::next_after`] gives the next slot strictly after an instant;
//! [`Spec::latest_at_or_before`] the most recent slot not after it (used by
//! beat to fire the most recent missed slot once after downtime).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use crate::error::{Result, StemError};

/// The shortest `every:` period accepted.
pub const MIN_PERIOD: Duration = Duration::from_millis(100);

/// A parsed schedule spec. Compares (and prints) as its text.
#[derive(Clone)]
pub struct Spec {
    text: String,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Every { period_ms: i64 },
    Cron(Box<Cron>),
}

impl PartialEq for Spec {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for Spec {}

impl fmt::Debug for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Spec({:?})", self.text)
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Spec {
    type Err = StemError;
    fn from_str(s: &str) -> Result<Self> {
        Spec::parse(s)
    }
}

fn invalid(msg: impl Into<String>) -> StemError {
    StemError::InvalidArgument(msg.into())
}

/// Parses an IANA time zone name; empty means UTC.
pub fn parse_timezone(name: &str) -> Result<Tz> {
    let name = name.trim();
    if name.is_empty() {
        return Ok(Tz::UTC);
    }
    name.parse::<Tz>().map_err(|_| {
        invalid(format!(
            "unknown time zone {name:?} (use an IANA name such as Europe/Berlin)"
        ))
    })
}

/// Parses `<n>ms|s|m|h|d` (a bare number is seconds).
fn parse_period(text: &str) -> Option<Duration> {
    crate::env::parse_duration(text)
}

impl Spec {
    /// Parses `every:<n>[ms|s|m|h|d]` (unit default `s`) or a cron expression
    /// of 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds
    /// first). Rejects periods under [`MIN_PERIOD`] and cron expressions that
    /// never match.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.is_empty() {
            return Err(invalid("empty spec"));
        }
        if let Some(rest) = text.strip_prefix("every:") {
            let period = parse_period(rest).ok_or_else(|| {
                invalid(format!(
                    "invalid interval {text:?}: use every:<n>[ms|s|m|h|d]"
                ))
            })?;
            if period < MIN_PERIOD {
                return Err(invalid(format!(
                    "interval {text:?} is shorter than {}ms",
                    MIN_PERIOD.as_millis()
                )));
            }
            let period_ms = i64::try_from(period.as_millis())
                .map_err(|_| invalid(format!("interval {text:?} is too long")))?;
            return Ok(Spec {
                text: text.to_string(),
                kind: Kind::Every { period_ms },
            });
        }
        let fields = text.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(invalid(format!(
                "invalid spec {text:?}: expected every:<n>[ms|s|m|h|d] or a cron expression of 5 fields \
                 (minute hour day month weekday) or 6 (seconds first), got {fields} field(s)"
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(text)
            .map_err(|e| invalid(format!("invalid cron expression {text:?}: {e}")))?;
        let spec = Spec {
            text: text.to_string(),
            kind: Kind::Cron(Box::new(cron)),
        };
        if spec.next_after(Utc::now(), Tz::UTC, Utc::now()).is_none() {
            return Err(invalid(format!("cron expression {text:?} never matches")));
        }
        Ok(spec)
    }

    /// The spec as written (trimmed).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The period of an `every:` spec; `None` for cron.
    pub fn period(&self) -> Option<Duration> {
        match self.kind {
            Kind::Every { period_ms } => Some(Duration::from_millis(period_ms as u64)),
            Kind::Cron(_) => None,
        }
    }

    /// True for cron expressions.
    pub fn is_cron(&self) -> bool {
        matches!(self.kind, Kind::Cron(_))
    }

    /// The next slot strictly after `t`. `tz` is used by cron, `anchor` by
    /// `every:` (slots are `anchor + k·period`). `None` when the schedule
    /// has no further slot.
    pub fn next_after(
        &self,
        t: DateTime<Utc>,
        tz: Tz,
        anchor: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Every { period_ms } => {
                let (a, p) = (anchor.timestamp_millis(), *period_ms);
                let k = (t.timestamp_millis() - a).div_euclid(p) + 1;
                DateTime::from_timestamp_millis(a.checked_add(k.checked_mul(p)?)?)
            }
            Kind::Cron(cron) => cron
                .find_next_occurrence(&t.with_timezone(&tz), false)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
        }
    }

    /// The most recent slot at or before `t` (see [`Spec::next_after`]).
    pub fn latest_at_or_before(
        &self,
        t: DateTime<Utc>,
        tz: Tz,
        anchor: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Every { period_ms } => {
                let (a, p) = (anchor.timestamp_millis(), *period_ms);
                let k = (t.timestamp_millis() - a).div_euclid(p);
                DateTime::from_timestamp_millis(a.checked_add(k.checked_mul(p)?)?)
            }
            Kind::Cron(cron) => cron
                .find_previous_occurrence(&t.with_timezone(&tz), true)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
        }
    }

    /// How many slots lie in `[from, to)` (capped at `cap`).
    pub fn slots_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        tz: Tz,
        anchor: DateTime<Utc>,
        cap: u64,
    ) -> u64 {
        if to <= from {
            return 0;
        }
        if let Kind::Every { period_ms } = self.kind {
            // from is normally on the grid; count grid points in [from, to).
            let first = if self.latest_at_or_before(from, tz, anchor) == Some(from) {
                from
            } else {
                match self.next_after(from, tz, anchor) {
                    Some(f) => f,
                    None => return 0,
                }
            };
            if first >= to {
                return 0;
            }
            let span = (to.timestamp_millis() - first.timestamp_millis()) as u64;
            return span.div_ceil(period_ms as u64).min(cap);
        }
        let mut n = 0;
        let mut cur = match self.latest_at_or_before(from, tz, anchor) {
            Some(s) if s == from => Some(from),
            _ => self.next_after(from, tz, anchor),
        };
        while let Some(s) = cur {
            if s >= to || n >= cap {
                break;
            }
            n += 1;
            cur = self.next_after(s, tz, anchor);
        }
        n
    }

    /// The first `count` slots strictly after `from` (a dry run).
    pub fn upcoming(
        &self,
        from: DateTime<Utc>,
        tz: Tz,
        anchor: DateTime<Utc>,
        count: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(count);
        let mut cur = from;
        while out.len() < count {
            match self.next_after(cur, tz, anchor) {
                Some(next) => {
                    out.push(next);
                    cur = next;
                }
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("valid RFC 3339 in test")
            .with_timezone(&Utc)
    }

    fn spec(s: &str) -> Spec {
        Spec::parse(s).expect("valid spec in test")
    }

    fn tz(name: &str) -> Tz {
        parse_timezone(name).expect("known zone in test")
    }

    #[test]
    fn every_units_parse() {
        assert_eq!(spec("every:30s").period(), Some(Duration::from_secs(30)));
        assert_eq!(
            spec("every:250ms").period(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(spec("every:2m").period(), Some(Duration::from_secs(120)));
        assert_eq!(spec("every:1h").period(), Some(Duration::from_secs(3600)));
        assert_eq!(spec("every:1d").period(), Some(Duration::from_secs(86_400)));
        assert_eq!(spec("every:15").period(), Some(Duration::from_secs(15)));
        for bad in [
            "every:",
            "every:0s",
            "every:10ms",
            "every:5y",
            "every:-1s",
            "every:abc",
        ] {
            assert!(Spec::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn every_grid_is_anchored_and_never_drifts() {
        let s = spec("every:30s");
        let anchor = at("2025-01-01T00:00:00.250Z");
        let utc = Tz::UTC;
        // Strictly after: a slot itself yields the following one.
        assert_eq!(
            s.next_after(anchor, utc, anchor),
            Some(at("2025-01-01T00:00:30.250Z"))
        );
        // A late dispatch (12.7 s after the slot) does not move the grid.
        let late = at("2025-01-01T00:00:42.950Z");
        assert_eq!(
            s.next_after(late, utc, anchor),
            Some(at("2025-01-01T00:01:00.250Z"))
        );
        // Iterating next_after from each slot stays exactly on the grid.
        let mut cur = anchor;
        for k in 1..=10_000i64 {
            cur = s.next_after(cur, utc, anchor).expect("next slot");
            assert_eq!(
                cur.timestamp_millis(),
                anchor.timestamp_millis() + k * 30_000
            );
        }
        // Before the anchor the grid extends backwards.
        assert_eq!(
            s.next_after(at("2024-12-31T23:59:59Z"), utc, anchor),
            Some(anchor)
        );
        assert_eq!(
            s.latest_at_or_before(late, utc, anchor),
            Some(at("2025-01-01T00:00:30.250Z"))
        );
        assert_eq!(s.latest_at_or_before(anchor, utc, anchor), Some(anchor));
    }

    #[test]
    fn missed_slots_are_counted() {
        let s = spec("every:1s");
        let a = at("2025-01-01T00:00:00Z");
        assert_eq!(
            s.slots_between(
                at("2025-01-01T00:00:01Z"),
                at("2025-01-01T00:00:05Z"),
                Tz::UTC,
                a,
                100
            ),
            4
        );
        assert_eq!(
            s.slots_between(
                at("2025-01-01T00:00:01Z"),
                at("2025-01-01T00:00:01Z"),
                Tz::UTC,
                a,
                100
            ),
            0
        );
        let c = spec("* * * * * *");
        assert_eq!(
            c.slots_between(
                at("2025-01-01T00:00:01Z"),
                at("2025-01-01T00:00:05Z"),
                Tz::UTC,
                a,
                100
            ),
            4
        );
        assert_eq!(
            c.slots_between(
                at("2025-01-01T00:00:01Z"),
                at("2025-01-01T01:00:00Z"),
                Tz::UTC,
                a,
                10
            ),
            10
        );
    }

    #[test]
    fn cron_five_fields_is_minute_granular() {
        let s = spec("*/15 * * * *");
        assert!(s.is_cron());
        let a = at("2025-01-01T00:00:00Z");
        assert_eq!(
            s.upcoming(at("2025-06-01T10:07:12.500Z"), Tz::UTC, a, 3),
            vec![
                at("2025-06-01T10:15:00Z"),
                at("2025-06-01T10:30:00Z"),
                at("2025-06-01T10:45:00Z")
            ]
        );
        // Strictly after a slot.
        assert_eq!(
            s.next_after(at("2025-06-01T10:15:00Z"), Tz::UTC, a),
            Some(at("2025-06-01T10:30:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(at("2025-06-01T10:29:59.999Z"), Tz::UTC, a),
            Some(at("2025-06-01T10:15:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(at("2025-06-01T10:30:00Z"), Tz::UTC, a),
            Some(at("2025-06-01T10:30:00Z"))
        );
        let weekdays = spec("0 9 * * 1-5");
        // 2025-06-06 is a Friday: next is Monday the 9th.
        assert_eq!(
            weekdays.next_after(at("2025-06-06T09:00:00Z"), Tz::UTC, a),
            Some(at("2025-06-09T09:00:00Z"))
        );
    }

    #[test]
    fn cron_six_fields_has_seconds_first() {
        let s = spec("*/20 * * * * *");
        let a = at("2025-01-01T00:00:00Z");
        assert_eq!(
            s.upcoming(at("2025-06-01T10:00:05.100Z"), Tz::UTC, a, 4),
            vec![
                at("2025-06-01T10:00:20Z"),
                at("2025-06-01T10:00:40Z"),
                at("2025-06-01T10:01:00Z"),
                at("2025-06-01T10:01:20Z")
            ]
        );
        assert_eq!(
            spec("30 0 12 * * *").next_after(at("2025-06-01T12:00:30Z"), Tz::UTC, a),
            Some(at("2025-06-02T12:00:30Z"))
        );
    }

    #[test]
    fn bad_cron_is_rejected() {
        for bad in [
            "* * * *",
            "* * * * * * *",
            "61 * * * *",
            "0 0 30 2 *",
            "x y z a b",
            "every 5s",
        ] {
            assert!(Spec::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_timezone("Mars/Olympus").is_err());
        assert_eq!(parse_timezone("").expect("default"), Tz::UTC);
    }

    #[test]
    fn cron_is_evaluated_in_the_entry_time_zone() {
        let s = spec("0 9 * * *");
        let a = at("2025-01-01T00:00:00Z");
        // 09:00 in Berlin in winter is 08:00 UTC, in summer 07:00 UTC.
        assert_eq!(
            s.next_after(at("2025-01-15T00:00:00Z"), tz("Europe/Berlin"), a),
            Some(at("2025-01-15T08:00:00Z"))
        );
        assert_eq!(
            s.next_after(at("2025-07-15T00:00:00Z"), tz("Europe/Berlin"), a),
            Some(at("2025-07-15T07:00:00Z"))
        );
        assert_eq!(
            s.next_after(at("2025-07-15T00:00:00Z"), tz("America/New_York"), a),
            Some(at("2025-07-15T13:00:00Z"))
        );
    }

    #[test]
    fn fixed_time_in_the_skipped_hour_runs_once_after_the_gap() {
        // Europe/Berlin springs forward on 2025-03-30: 02:00 CET → 03:00 CEST.
        let s = spec("30 2 * * *");
        let berlin = tz("Europe/Berlin");
        let a = at("2025-01-01T00:00:00Z");
        assert_eq!(
            s.upcoming(at("2025-03-28T12:00:00Z"), berlin, a, 4),
            vec![
                at("2025-03-29T01:30:00Z"), // 02:30 CET
                at("2025-03-30T01:00:00Z"), // 02:30 does not exist: 03:00 CEST
                at("2025-03-31T00:30:00Z"), // 02:30 CEST
                at("2025-04-01T00:30:00Z"),
            ]
        );
        // America/New_York springs forward on 2025-03-09: 02:00 EST → 03:00
        // EDT; 02:30 does not exist that day and runs at 03:00 EDT.
        let ny = tz("America/New_York");
        assert_eq!(
            spec("0 30 2 * * *").upcoming(at("2025-03-08T12:00:00Z"), ny, a, 3),
            vec![
                at("2025-03-09T07:00:00Z"), // 03:00 EDT
                at("2025-03-10T06:30:00Z"), // 02:30 EDT
                at("2025-03-11T06:30:00Z"),
            ]
        );
    }

    #[test]
    fn fixed_time_in_the_repeated_hour_runs_once() {
        // Europe/Berlin falls back on 2025-10-26: 03:00 CEST → 02:00 CET, so
        // 02:30 happens twice (00:30 UTC and 01:30 UTC). It fires once, first.
        let s = spec("30 2 * * *");
        let berlin = tz("Europe/Berlin");
        let a = at("2025-01-01T00:00:00Z");
        assert_eq!(
            s.upcoming(at("2025-10-25T12:00:00Z"), berlin, a, 2),
            vec![at("2025-10-26T00:30:00Z"), at("2025-10-27T01:30:00Z")]
        );
        // America/New_York falls back on 2025-11-02: 02:00 EDT → 01:00 EST.
        let ny = tz("America/New_York");
        assert_eq!(
            spec("30 1 * * *").upcoming(at("2025-11-01T12:00:00Z"), ny, a, 2),
            vec![at("2025-11-02T05:30:00Z"), at("2025-11-03T06:30:00Z")]
        );
    }

    #[test]
    fn interval_cron_follows_real_time_across_dst() {
        let berlin = tz("Europe/Berlin");
        let a = at("2025-01-01T00:00:00Z");
        // Fall back: the half-hour slots of both 02:xx hours exist.
        assert_eq!(
            spec("*/30 * * * *").upcoming(at("2025-10-25T23:45:00Z"), berlin, a, 5),
            vec![
                at("2025-10-26T00:00:00Z"), // 02:00 CEST
                at("2025-10-26T00:30:00Z"), // 02:30 CEST
                at("2025-10-26T01:00:00Z"), // 02:00 CET
                at("2025-10-26T01:30:00Z"), // 02:30 CET
                at("2025-10-26T02:00:00Z"), // 03:00 CET
            ]
        );
        // Spring forward: no slot in the missing hour.
        assert_eq!(
            spec("*/30 * * * *").upcoming(at("2025-03-30T00:15:00Z"), berlin, a, 3),
            vec![
                at("2025-03-30T00:30:00Z"), // 01:30 CET
                at("2025-03-30T01:00:00Z"), // 03:00 CEST
                at("2025-03-30T01:30:00Z"), // 03:30 CEST
            ]
        );
    }
}
