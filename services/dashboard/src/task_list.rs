//! The tasks page (`GET /tasks?state=&queue=&task=&q=&page=&pageSize=`):
//! its filters as the query string carries them, the rows it shows, and
//! the links between its pages. The rows come from the library's
//! recent-task index ([`stem::recent`]); a task id typed into `q` that the
//! index no longer holds is still found by its status.

use serde::Deserialize;
use stem::envelope::{now_ms, TaskState};
use stem::recent::{TaskListing, TaskQuery, TaskRow};

use crate::view::age;

/// Rows a page shows unless `pageSize` says otherwise.
pub(crate) const DEFAULT_PAGE_SIZE: usize = 25;
/// The page sizes offered; a `pageSize` outside 25–200 is brought inside.
pub(crate) const PAGE_SIZES: [usize; 4] = [25, 50, 100, 200];
/// The states a filter offers, in life-cycle order.
pub(crate) const STATES: [&str; 6] = [
    "queued",
    "running",
    "retried",
    "succeeded",
    "failed",
    "cancelled",
];
/// Longest args or error text a row shows before cutting it.
const SNIPPET: usize = 90;

/// The tasks page's query string as sent: every filter optional and still
/// text, so that a bad value is read leniently by [`Filters::parse`]
/// instead of refusing the page.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct FilterQuery {
    state: Option<String>,
    queue: Option<String>,
    task: Option<String>,
    q: Option<String>,
    page: Option<String>,
    #[serde(rename = "pageSize")]
    page_size: Option<String>,
}

/// The filters of one tasks page, as read from its query string.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Filters {
    pub state: String,
    pub queue: String,
    pub task: String,
    pub q: String,
    pub page: usize,
    pub page_size: usize,
}

impl Filters {
    /// Reads the query string leniently: an unknown state or a bad number
    /// falls back to no filter and the defaults.
    pub(crate) fn parse(query: &FilterQuery) -> Self {
        let text = |v: &Option<String>| v.as_deref().map(str::trim).unwrap_or_default().to_string();
        let number = |v: &Option<String>| v.as_deref().and_then(|v| v.trim().parse::<usize>().ok());
        let state = text(&query.state);
        Self {
            state: if STATES.contains(&state.as_str()) {
                state
            } else {
                String::new()
            },
            queue: text(&query.queue),
            task: text(&query.task),
            q: text(&query.q),
            page: number(&query.page).unwrap_or(1).clamp(1, 10_000),
            page_size: number(&query.page_size)
                .unwrap_or(DEFAULT_PAGE_SIZE)
                .clamp(PAGE_SIZES[0], PAGE_SIZES[PAGE_SIZES.len() - 1]),
        }
    }

    /// The library query these filters ask.
    pub(crate) fn query(&self) -> TaskQuery {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        TaskQuery {
            state: self.state.parse::<TaskState>().ok(),
            queue: some(&self.queue),
            task: some(&self.task),
            text: some(&self.q),
            page: self.page,
            page_size: self.page_size,
        }
    }

    /// Whether any filter is set (the live list follows only page 1).
    pub(crate) fn is_filtered(&self) -> bool {
        !(self.state.is_empty()
            && self.queue.is_empty()
            && self.task.is_empty()
            && self.q.is_empty())
    }

    /// The query string of page `page` with these filters (empty ones
    /// left out), starting with `?`.
    pub(crate) fn href(&self, page: usize) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        for (k, v) in [
            ("state", &self.state),
            ("queue", &self.queue),
            ("task", &self.task),
            ("q", &self.q),
        ] {
            if !v.is_empty() {
                pairs.push((k, v.clone()));
            }
        }
        if self.page_size != DEFAULT_PAGE_SIZE {
            pairs.push(("pageSize", self.page_size.to_string()));
        }
        if page != 1 {
            pairs.push(("page", page.to_string()));
        }
        match serde_urlencoded::to_string(&pairs) {
            Ok(s) if !s.is_empty() => format!("?{s}"),
            _ => String::new(),
        }
    }
}

/// One row of the tasks table.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub id: String,
    pub task: String,
    pub queue: String,
    /// The status's state, or `expired` once the backend forgot it.
    pub state: &'static str,
    pub attempt: String,
    /// How long ago it was published.
    pub age: String,
    pub args: String,
    pub error: String,
}

impl Row {
    pub(crate) fn of(r: &TaskRow, now: i64) -> Self {
        let status = r.status.as_ref();
        Self {
            id: r.spec.id.clone(),
            task: r.spec.name.clone(),
            queue: r.spec.queue.clone(),
            state: status.map(|s| s.state.as_str()).unwrap_or("expired"),
            attempt: status.map(|s| s.attempt.to_string()).unwrap_or_default(),
            age: age(now - r.published_ms),
            args: match (&r.spec.args, r.truncated) {
                // The index's preview: the args' JSON text, cut.
                (serde_json::Value::String(cut), Some(_)) => snippet(cut),
                (args, _) => snippet(&serde_json::to_string(args).unwrap_or_default()),
            },
            error: status
                .and_then(|s| s.error.as_ref())
                .map(|e| snippet(&e.message))
                .unwrap_or_default(),
        }
    }
}

/// `text` cut to [`SNIPPET`] characters.
fn snippet(text: &str) -> String {
    match text.char_indices().nth(SNIPPET) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// What the page shows below the table about how far the search looked.
pub(crate) fn reach(listing: &TaskListing) -> String {
    if listing.complete {
        format!(
            "Searched all {} tasks the recent-task index holds.",
            listing.scanned
        )
    } else if listing.has_more {
        String::new()
    } else {
        format!(
            "Searched the newest {} tasks; narrow the filters to look further back.",
            listing.scanned
        )
    }
}

/// The rows of `listing`.
pub(crate) fn rows(listing: &TaskListing) -> Vec<Row> {
    let now = now_ms();
    listing.rows.iter().map(|r| Row::of(r, now)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filters of a query string made of `pairs`, decoded as axum's
    /// `Query` extractor decodes it.
    fn parse(pairs: &[(&str, &str)]) -> Filters {
        let query = serde_urlencoded::to_string(pairs).expect("encodable");
        Filters::parse(&serde_urlencoded::from_str(&query).expect("a filter query"))
    }

    #[test]
    fn filters_read_leniently_and_link_back() {
        let f = parse(&[("state", "bogus"), ("pageSize", "5000"), ("page", "0")]);
        assert_eq!((f.state.as_str(), f.page, f.page_size), ("", 1, 200));
        let f = parse(&[("state", "failed"), ("q", " a b&c "), ("pageSize", "10")]);
        assert_eq!((f.q.as_str(), f.page_size), ("a b&c", 25));
        assert_eq!(f.href(2), "?state=failed&q=a+b%26c&page=2");
        assert_eq!(parse(&[]).href(1), "");
        assert!(!parse(&[]).is_filtered());
    }

    #[test]
    fn snippets_cut_on_a_character() {
        let long = "é".repeat(100);
        assert_eq!(snippet(&long).chars().count(), SNIPPET + 1);
        assert_eq!(snippet("short"), "short");
    }
}
