//! The dead-letter stream's record: one field per part, readable with
//! `XRANGE` by an operator (unlike the packed ready entries, dead letters
//! are off the hot path, so legibility wins).
//!
//! | field | value |
//! | --- | --- |
//! | `reason` | why the entry died (`max-retries-exhausted`, `signature-invalid`, …) |
//! | `dead_at` | epoch ms |
//! | `error` | the last error, when there is one |
//! | `body`, `attempt`, `kid`, `sig` | the envelope, when it decoded (kid and sig only when signed) |
//! | `raw` | the entry as text, when it did not |

use std::collections::HashMap;

use ::redis::streams::StreamId;
use ::redis::Value;
use bytes::Bytes;

#[cfg(test)]
use crate::broker::DeadLetterReason;
use crate::broker::{DeadLetter, NewDeadLetter};
use crate::envelope::{now_ms, WireEnvelope};

/// The fields of the record for `letter`.
pub(super) fn fields(letter: &NewDeadLetter) -> Vec<(&'static str, Vec<u8>)> {
    let mut f = vec![
        ("reason", letter.reason.as_str().as_bytes().to_vec()),
        ("dead_at", now_ms().to_string().into_bytes()),
    ];
    if let Some(e) = &letter.error {
        f.push(("error", e.clone().into_bytes()));
    }
    if let Some(w) = &letter.wire {
        f.push(("body", w.body.to_vec()));
        f.push(("attempt", w.attempt.to_string().into_bytes()));
        if let (Some(k), Some(s)) = (&w.key_id, &w.signature) {
            f.push(("kid", k.clone().into_bytes()));
            f.push(("sig", s.clone().into_bytes()));
        }
    }
    if let Some(r) = &letter.raw {
        f.push(("raw", r.clone().into_bytes()));
    }
    f
}

/// Reads a record of `queue`'s dead-letter stream back.
pub(super) fn decode(queue: &str, entry: &StreamId) -> DeadLetter {
    let map = &entry.map;
    DeadLetter {
        id: entry.id.clone(),
        queue: queue.to_string(),
        reason: string(map, "reason").unwrap_or_default(),
        error: string(map, "error"),
        dead_at_ms: string(map, "dead_at")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        wire: envelope(map),
        raw: string(map, "raw"),
    }
}

/// The envelope of a record, when it has one.
fn envelope(map: &HashMap<String, Value>) -> Option<WireEnvelope> {
    Some(WireEnvelope {
        body: Bytes::from(bytes(map, "body")?),
        attempt: string(map, "attempt")?.parse().ok()?,
        key_id: string(map, "kid").filter(|s| !s.is_empty()),
        signature: string(map, "sig").filter(|s| !s.is_empty()),
    })
}

fn bytes(map: &HashMap<String, Value>, name: &str) -> Option<Vec<u8>> {
    match map.get(name)? {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn string(map: &HashMap<String, Value>, name: &str) -> Option<String> {
    bytes(map, name).map(|b| String::from_utf8_lossy(&b).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: Vec<(&'static str, Vec<u8>)>) -> StreamId {
        StreamId {
            id: "1-0".into(),
            map: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), Value::BulkString(v)))
                .collect(),
            milliseconds_elapsed_from_delivery: None,
            delivered_count: None,
        }
    }

    #[test]
    fn a_letter_with_its_envelope_round_trips() {
        let wire = WireEnvelope {
            body: Bytes::from_static(b"{}"),
            key_id: Some("k1".into()),
            signature: Some("c2ln".into()),
            attempt: 2,
        };
        let letter = NewDeadLetter {
            reason: DeadLetterReason::MaxRetriesExhausted,
            error: Some("boom".into()),
            wire: Some(wire.clone()),
            raw: None,
        };
        let back = decode("q", &record(fields(&letter)));
        assert_eq!(back.reason, "max-retries-exhausted");
        assert_eq!(back.error.as_deref(), Some("boom"));
        assert_eq!(back.wire, Some(wire));
        assert!(back.dead_at_ms > 0 && back.raw.is_none());
    }

    #[test]
    fn a_letter_of_garbage_keeps_its_raw_text() {
        let letter = NewDeadLetter {
            reason: DeadLetterReason::MalformedEnvelope,
            error: None,
            wire: None,
            raw: Some(r#"{"foo":"bar"}"#.into()),
        };
        let back = decode("q", &record(fields(&letter)));
        assert_eq!(back.wire, None);
        assert_eq!(back.raw.as_deref(), Some(r#"{"foo":"bar"}"#));
    }
}
