//! The schedule file (`STEM_SCHEDULE_FILE`, `schedules.example.yaml`): the
//! reference's YAML format, loaded leniently for beat and strictly for
//! `stem schedule apply`.
//!
//! ```yaml
//! entries:
//!   - id: greetings-reminder          # required: letters, digits, - _ .
//!     task: greeting.send             # required (alias: taskName)
//!     queue: greetings                # default "default"
//!     spec: every:30s                 # every:<n>[ms|s|m|h|d] or cron (5 or 6 fields); default every:60s
//!     jitter: 5s                      # <n>ms|s|m|h, or an integer number of seconds; default 0
//!     enabled: true                   # default true
//!     misfire: all                    # all | latest | skip: slots missed while no beat fired; default all
//!     timezone: Europe/Berlin         # IANA name, default UTC
//!     args: {name: "scheduled friend"}
//!     meta: {seeded: true}
//! ```
//!
//! [`parse`] skips an invalid entry with a `tracing::warn!` naming it (id,
//! else its 1-based position) and why, and loads the others; [`parse_strict`]
//! returns every error instead (and rejects unknown keys and duplicate ids,
//! which [`parse`] only warns about).

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::entry::{Misfire, ScheduleEntry, DEFAULT_QUEUE};
use super::spec::{parse_timezone, Spec};
use super::store::{ScheduleStore, UpsertOutcome};
use crate::error::{Result, StemError};

/// The spec of an entry that names none (as in the reference).
pub const DEFAULT_SPEC: &str = "every:60s";

const KNOWN_KEYS: [&str; 11] = [
    "id", "task", "taskName", "queue", "spec", "jitter", "enabled", "misfire", "timezone", "args",
    "meta",
];

/// A problem with the file or with one entry of it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", self.location())]
pub struct SeedError {
    /// 1-based position of the entry; `None` for the file as a whole.
    pub index: Option<usize>,
    /// The entry's id, when it has a readable one.
    pub id: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl SeedError {
    fn file(message: impl Into<String>) -> Self {
        SeedError {
            index: None,
            id: None,
            message: message.into(),
        }
    }

    /// `schedule file`, `entry 3` or `entry 3 (id "x")`.
    pub fn location(&self) -> String {
        match (self.index, &self.id) {
            (None, _) => "schedule file".to_string(),
            (Some(i), None) => format!("entry {i}"),
            (Some(i), Some(id)) => format!("entry {i} (id {id:?})"),
        }
    }
}

impl From<SeedError> for StemError {
    fn from(e: SeedError) -> Self {
        StemError::InvalidArgument(e.to_string())
    }
}

/// The entries of a file that loaded, and those that were skipped.
#[derive(Clone, Debug, Default)]
pub struct SeedFile {
    /// Entries that loaded, in file order.
    pub entries: Vec<ScheduleEntry>,
    /// Entries that did not load (invalid, or a duplicate id), with the reason.
    pub skipped: Vec<SeedError>,
    /// Non-fatal remarks (unknown keys, duplicates) already logged.
    pub warnings: Vec<SeedError>,
}

/// YAML → JSON; mapping keys become strings, tags are dropped.
fn to_json(v: serde_norway::Value) -> Value {
    use serde_norway::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (key_string(k), to_json(v)))
                .collect(),
        ),
        Y::Tagged(t) => to_json(t.value),
    }
}

fn key_string(k: serde_norway::Value) -> String {
    match to_json(k) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Parses a `jitter` value: integer seconds or `<n>ms|s|m|h`.
fn parse_jitter(v: &Value) -> std::result::Result<Duration, String> {
    match v {
        Value::Null => Ok(Duration::ZERO),
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| format!("jitter {n} is not a whole number of seconds ≥ 0")),
        Value::String(s) => {
            let t = s.trim();
            if t.ends_with('d') {
                return Err(format!("invalid jitter {s:?}: use <n>ms|s|m|h"));
            }
            crate::env::parse_duration(t)
                .ok_or_else(|| format!("invalid jitter {s:?}: use <n>ms|s|m|h or whole seconds"))
        }
        other => Err(format!(
            "invalid jitter {other}: use <n>ms|s|m|h or whole seconds"
        )),
    }
}

fn string_field(
    obj: &Map<String, Value>,
    key: &str,
) -> std::result::Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
        Some(other) => Err(format!("{key} must be a string, got {other}")),
    }
}

/// One entry of the file → a validated entry; `Err` says why not.
fn entry_from(obj: &Map<String, Value>) -> std::result::Result<ScheduleEntry, String> {
    let id = string_field(obj, "id")?.ok_or("missing id")?;
    let task = match string_field(obj, "task")? {
        Some(t) => t,
        None => string_field(obj, "taskName")?.ok_or("missing task (or taskName)")?,
    };
    let queue = string_field(obj, "queue")?.unwrap_or_else(|| DEFAULT_QUEUE.to_string());
    let spec_text = string_field(obj, "spec")?.unwrap_or_else(|| DEFAULT_SPEC.to_string());
    let spec = Spec::parse(&spec_text).map_err(|e| strip(e.to_string()))?;
    let timezone = parse_timezone(&string_field(obj, "timezone")?.unwrap_or_default())
        .map_err(|e| strip(e.to_string()))?;
    let jitter = parse_jitter(obj.get("jitter").unwrap_or(&Value::Null))?;
    let enabled = match obj.get("enabled") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
        Some(other) => return Err(format!("enabled must be true or false, got {other}")),
    };
    let misfire = match string_field(obj, "misfire")? {
        None => Misfire::All,
        Some(m) => Misfire::parse(&m).map_err(|e| strip(e.to_string()))?,
    };
    let args = match obj.get("args") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(other) => return Err(format!("args must be a mapping, got {other}")),
    };
    let meta = match obj.get("meta") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => return Err(format!("meta must be a mapping, got {other}")),
    };
    let entry = ScheduleEntry {
        id,
        task,
        queue,
        spec,
        timezone,
        jitter,
        enabled,
        misfire,
        args,
        meta,
        history: Default::default(),
    };
    entry.validate().map_err(|e| strip(e.to_string()))?;
    Ok(entry)
}

/// Drops the `invalid argument: ` prefix of a [`StemError`] message.
fn strip(msg: String) -> String {
    msg.strip_prefix("invalid argument: ")
        .map(str::to_string)
        .unwrap_or(msg)
}

/// Everything found in a file: entries, per-entry errors, remarks.
fn examine(text: &str) -> std::result::Result<SeedFile, SeedError> {
    let doc: serde_norway::Value = serde_norway::from_str(text)
        .map_err(|e| SeedError::file(format!("not valid YAML: {e}")))?;
    let list = match to_json(doc) {
        Value::Object(mut top) => match top.remove("entries") {
            Some(Value::Array(items)) => items,
            Some(Value::Null) | None => {
                return Err(SeedError::file("no top-level `entries:` list"));
            }
            Some(other) => {
                return Err(SeedError::file(format!(
                    "`entries` must be a list, got {other}"
                )));
            }
        },
        _ => {
            return Err(SeedError::file(
                "expected a mapping with an `entries:` list",
            ))
        }
    };
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    let mut remarks = Vec::new();
    let mut seen = HashSet::new();
    for (i, item) in list.into_iter().enumerate() {
        let index = Some(i + 1);
        let Value::Object(obj) = item else {
            errors.push(SeedError {
                index,
                id: None,
                message: format!("expected a mapping, got {item}"),
            });
            continue;
        };
        let id = obj.get("id").and_then(Value::as_str).map(str::to_string);
        for key in obj.keys().filter(|k| !KNOWN_KEYS.contains(&k.as_str())) {
            remarks.push(SeedError {
                index,
                id: id.clone(),
                message: format!("unknown key {key:?} ignored"),
            });
        }
        match entry_from(&obj) {
            Ok(entry) if !seen.insert(entry.id.clone()) => errors.push(SeedError {
                index,
                id,
                message: "duplicate id (an earlier entry has it)".into(),
            }),
            Ok(entry) => entries.push(entry),
            Err(message) => errors.push(SeedError { index, id, message }),
        }
    }
    Ok(SeedFile {
        entries,
        skipped: errors,
        warnings: remarks,
    })
}

/// Lenient load (beat): invalid entries are skipped with a warning naming
/// them; only a file that is not YAML or has no `entries:` list fails.
pub fn parse(text: &str) -> std::result::Result<SeedFile, SeedError> {
    let file = examine(text)?;
    for w in &file.warnings {
        tracing::warn!("schedule file: {w}");
    }
    for s in &file.skipped {
        tracing::warn!("skipping invalid schedule {}: {}", s.location(), s.message);
    }
    Ok(file)
}

/// Strict load (`stem schedule apply`): all entries, or every error found
/// (file-level, per entry, unknown keys, duplicate ids).
pub fn parse_strict(text: &str) -> std::result::Result<Vec<ScheduleEntry>, Vec<SeedError>> {
    let SeedFile {
        entries,
        skipped: mut errors,
        warnings,
    } = examine(text).map_err(|e| vec![e])?;
    errors.extend(warnings.into_iter().map(|mut r| {
        r.message = r.message.replace(" ignored", "");
        r
    }));
    errors.sort_by_key(|e| e.index);
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

/// Reads `path` and parses it leniently.
pub fn load_file(path: &Path) -> std::result::Result<SeedFile, SeedError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SeedError::file(format!("cannot read {}: {e}", path.display())))?;
    parse(&text)
}

/// Reads `path` and parses it strictly.
pub fn load_file_strict(path: &Path) -> std::result::Result<Vec<ScheduleEntry>, Vec<SeedError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![SeedError::file(format!(
            "cannot read {}: {e}",
            path.display()
        ))]
    })?;
    parse_strict(&text)
}

/// Upserts `entries` (history kept), logging each change at info.
pub async fn apply(
    store: &dyn ScheduleStore,
    entries: &[ScheduleEntry],
    now: DateTime<Utc>,
) -> Result<Vec<(String, UpsertOutcome)>> {
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let outcome = store.upsert(e, now).await?;
        match outcome {
            UpsertOutcome::Unchanged => {
                tracing::debug!(schedule = %e.id, "schedule already matches the seed")
            }
            _ => tracing::info!(
                schedule = %e.id, task = %e.task, queue = %e.queue, spec = %e.spec,
                "schedule {}", outcome.as_str()
            ),
        }
        out.push((e.id.clone(), outcome));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
entries:
  - id: ok-one
    task: greeting.send
    queue: greetings
    spec: every:30s
    jitter: 5s
    args: {name: "scheduled friend", delayMs: 500}
    meta: {seeded: true}
  - id: bad-spec
    task: billing.charge
    spec: "every:soon"
  - task: no-id.task
    spec: every:10s
  - id: bad-zone
    taskName: reports.aggregate
    spec: "0 9 * * *"
    timezone: Mars/Olympus
  - id: ok-two
    taskName: reports.aggregate
    spec: "0 30 2 * * *"
    timezone: Europe/Berlin
    jitter: 3
    enabled: false
  - id: bad-jitter
    task: x
    jitter: soon
  - just a string
  - id: ok-one
    task: duplicate.task
"#;

    #[test]
    fn invalid_entries_are_skipped_and_the_rest_load() {
        let file = parse(FILE).expect("file-level valid");
        let ids: Vec<&str> = file.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["ok-one", "ok-two"]);
        let one = &file.entries[0];
        assert_eq!(one.task, "greeting.send");
        assert_eq!(one.queue, "greetings");
        assert_eq!(one.jitter, Duration::from_secs(5));
        assert_eq!(
            one.args,
            serde_json::json!({"name": "scheduled friend", "delayMs": 500})
        );
        assert_eq!(one.meta.get("seeded"), Some(&Value::Bool(true)));
        let two = &file.entries[1];
        assert_eq!(two.task, "reports.aggregate", "taskName alias");
        assert_eq!(two.queue, "default");
        assert_eq!(two.timezone.name(), "Europe/Berlin");
        assert_eq!(
            two.jitter,
            Duration::from_secs(3),
            "integer jitter = seconds"
        );
        assert!(!two.enabled);

        let skipped: Vec<String> = file.skipped.iter().map(|s| s.to_string()).collect();
        assert_eq!(skipped.len(), 6, "{skipped:#?}");
        assert!(
            skipped[0].starts_with("entry 2 (id \"bad-spec\"): invalid interval"),
            "{skipped:#?}"
        );
        assert!(
            skipped[1].starts_with("entry 3: missing id"),
            "{skipped:#?}"
        );
        assert!(
            skipped[2].contains("(id \"bad-zone\"): unknown time zone"),
            "{skipped:#?}"
        );
        assert!(
            skipped[3].contains("(id \"bad-jitter\"): invalid jitter"),
            "{skipped:#?}"
        );
        assert!(
            skipped[4].starts_with("entry 7: expected a mapping"),
            "{skipped:#?}"
        );
        assert!(
            skipped[5].contains("entry 8 (id \"ok-one\"): duplicate id"),
            "{skipped:#?}"
        );
    }

    #[test]
    fn misfire_policies_parse_and_default_to_all() {
        let text = "entries:\n  - id: a\n    task: t\n  - id: b\n    task: t\n    misfire: Latest\n  \
                    - id: c\n    task: t\n    misfire: skip\n  - id: d\n    task: t\n    misfire: never\n";
        let file = parse(text).expect("file-level valid");
        let got: Vec<(&str, Misfire)> = file
            .entries
            .iter()
            .map(|e| (e.id.as_str(), e.misfire))
            .collect();
        assert_eq!(
            got,
            [
                ("a", Misfire::All),
                ("b", Misfire::Latest),
                ("c", Misfire::Skip)
            ]
        );
        assert_eq!(
            file.skipped[0].to_string(),
            "entry 4 (id \"d\"): invalid misfire policy \"never\": use all, latest or skip"
        );
    }

    #[test]
    fn strict_mode_reports_every_error() {
        let errors = parse_strict(FILE).expect_err("invalid file");
        assert_eq!(errors.len(), 6, "{errors:#?}");
        let unknown = "entries:\n  - id: a\n    task: t\n    spec: every:1s\n    jiter: 5s\n";
        let errors = parse_strict(unknown).expect_err("unknown key");
        assert_eq!(
            errors[0].to_string(),
            "entry 1 (id \"a\"): unknown key \"jiter\""
        );
        assert_eq!(parse(unknown).expect("lenient").entries.len(), 1);
        let ok = parse_strict("entries:\n  - id: a\n    task: t\n").expect("valid");
        assert_eq!(ok[0].spec.as_str(), DEFAULT_SPEC);
    }

    #[test]
    fn file_level_errors() {
        for (text, needle) in [
            ("entries: [", "not valid YAML"),
            ("schedules: []", "no top-level `entries:` list"),
            ("- id: a", "expected a mapping"),
            ("entries: 3", "must be a list"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.to_string().contains(needle), "{text}: {err}");
            assert!(err.to_string().starts_with("schedule file: "), "{err}");
        }
        let err = load_file(Path::new("/nonexistent/schedules.yaml")).expect_err("missing");
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}
