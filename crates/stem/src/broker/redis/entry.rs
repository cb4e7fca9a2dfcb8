//! How an envelope is stored in a queue's streams and delayed set, and how
//! an `XREADGROUP` or `XCLAIM` reply is read back into deliveries.
//!
//! A stream entry has one field, `e` = `attempt \n kid \n sig \n body` (kid
//! and sig empty when unsigned): one value instead of four pairs is cheaper
//! for Redis to store and send and for the worker to parse, and the body is
//! sliced out of the reply's bytes, never copied. A delayed-set member is
//! `band \n` followed by the same packed entry. Anything else found in a
//! stream (a foreign producer's entry, garbage written by hand) is reported
//! as [`Fetched::Malformed`] with its fields as JSON, for the dead letter.

use std::collections::BTreeMap;

use ::redis::{Pipeline, Value};
use bytes::Bytes;

use crate::broker::{Delivery, Fetched, MalformedEntry, Outgoing, Receipt};
use crate::envelope::{now_ms, WireEnvelope, MAX_PRIORITY};
use crate::keys;

/// Field name of the packed envelope in a stream entry.
pub(super) const ENTRY_FIELD: &str = "e";

/// The packed form of `wire` (see the module doc).
pub(crate) fn pack(wire: &WireEnvelope) -> Vec<u8> {
    let kid = wire.key_id.as_deref().unwrap_or("");
    let sig = wire.signature.as_deref().unwrap_or("");
    let mut m = Vec::with_capacity(wire.body.len() + kid.len() + sig.len() + 16);
    m.extend_from_slice(wire.attempt.to_string().as_bytes());
    for part in [kid.as_bytes(), sig.as_bytes()] {
        m.push(b'\n');
        m.extend_from_slice(part);
    }
    m.push(b'\n');
    m.extend_from_slice(&wire.body);
    m
}

/// Reads [`pack`]'s form back; the body is a slice of `packed`, not a
/// copy. On error, the reason and the bytes as they were.
pub(super) fn unpack(packed: Vec<u8>) -> Result<WireEnvelope, (String, Vec<u8>)> {
    let mut cuts = packed
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i);
    let (Some(p1), Some(p2), Some(p3)) = (cuts.next(), cuts.next(), cuts.next()) else {
        return Err(("packed entry has fewer than four parts".into(), packed));
    };
    let part = |r: std::ops::Range<usize>| {
        std::str::from_utf8(&packed[r])
            .ok()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let Some(attempt) = part(0..p1).and_then(|a| a.parse::<u32>().ok()) else {
        return Err(("attempt is not a number".into(), packed));
    };
    let (key_id, signature) = (part(p1 + 1..p2), part(p2 + 1..p3));
    Ok(WireEnvelope {
        body: Bytes::from(packed).slice(p3 + 1..),
        key_id,
        signature,
        attempt,
    })
}

/// The epoch ms a stream entry id (`<ms>-<seq>`) starts with: when Redis
/// added the entry.
pub(crate) fn entry_ms(id: &str) -> Option<i64> {
    id.split('-').next()?.parse().ok()
}

/// A delayed-set member: the band, then the packed entry.
pub(crate) fn delayed_member(band: u8, wire: &WireEnvelope) -> Vec<u8> {
    let mut m = format!("{}\n", band.min(MAX_PRIORITY)).into_bytes();
    m.extend(pack(wire));
    m
}

/// Adds the `XADD` of `wire` to band `band` of `queue` (reply ignored).
pub(super) fn push_entry(pipe: &mut Pipeline, queue: &str, band: u8, wire: &WireEnvelope) {
    pipe.xadd(keys::band(queue, band), "*", &[(ENTRY_FIELD, pack(wire))])
        .ignore();
}

/// Where `out` goes now: the delayed set for a future not-before, else its
/// band's stream.
pub(crate) enum Placement {
    /// `ZADD` of a [`delayed_member`] at this score.
    Delayed(i64),
    /// `XADD` of the packed entry.
    Ready,
}

impl Placement {
    pub(crate) fn of(out: &Outgoing) -> Self {
        match out.not_before_ms {
            Some(t) if t > now_ms() => Placement::Delayed(t),
            _ => Placement::Ready,
        }
    }
}

/// Adds the commands that publish `batch` (replies ignored).
pub(crate) fn push_outgoing(pipe: &mut Pipeline, batch: &[Outgoing]) {
    for o in batch {
        match Placement::of(o) {
            Placement::Delayed(t) => {
                pipe.zadd(
                    keys::delayed(&o.queue),
                    delayed_member(o.priority, &o.wire),
                    t,
                )
                .ignore();
            }
            Placement::Ready => push_entry(pipe, &o.queue, o.priority, &o.wire),
        }
    }
}

/// The elements of an array-like reply (RESP2 arrays, RESP3 maps flattened
/// into key, value, key, value).
pub(super) fn elements(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// A reply value as text, when it is one.
pub(super) fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// One stream entry, decoded straight from the reply's values: the body's
/// bytes are moved, not copied, and the fields are only rendered as text
/// when the entry is malformed.
pub(super) fn to_fetched(queue: &str, lane: u8, entry_id: String, fields: Vec<Value>) -> Fetched {
    let receipt = Receipt {
        queue: queue.to_string(),
        lane,
        entry_id,
    };
    let mut fields = fields;
    let error = match fields.as_mut_slice() {
        [k, Value::BulkString(packed)] if text(k) == Some(ENTRY_FIELD) => {
            match unpack(std::mem::take(packed)) {
                Ok(wire) => {
                    return Fetched::Task(Delivery {
                        receipt,
                        wire,
                        deliveries: 1,
                    })
                }
                Err((error, bytes)) => {
                    fields[1] = Value::BulkString(bytes);
                    error
                }
            }
        }
        _ => format!("entry has no single `{ENTRY_FIELD}` field"),
    };
    Fetched::Malformed(MalformedEntry {
        receipt,
        raw: fields_as_json(fields),
        error,
    })
}

/// The field pairs of an entry as a JSON object of text, for a dead letter.
fn fields_as_json(fields: Vec<Value>) -> String {
    let mut pairs = fields.into_iter();
    let mut map = BTreeMap::new();
    while let (Some(k), Some(v)) = (pairs.next(), pairs.next()) {
        let lossy = |v: &Value| match v {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            _ => String::new(),
        };
        map.insert(lossy(&k), lossy(&v));
    }
    serde_json::to_string(&map).unwrap_or_default()
}

/// Walks an `XREADGROUP` reply (RESP2 or RESP3) into deliveries.
pub(super) fn from_read_reply(reply: Value, out: &mut Vec<Fetched>) {
    let streams: Vec<(Value, Value)> = match reply {
        Value::Map(m) => m,
        other => elements(other)
            .into_iter()
            .filter_map(|s| {
                let mut kv = elements(s).into_iter();
                Some((kv.next()?, kv.next()?))
            })
            .collect(),
    };
    for (key, entries) in streams {
        let Some((queue, lane)) = text(&key).and_then(keys::parse_lane) else {
            continue;
        };
        for entry in elements(entries) {
            if let Some((id, fields)) = id_and_fields(entry) {
                out.push(to_fetched(&queue, lane, id, fields));
            }
        }
    }
}

/// Splits one `[id, [field, value, …]]` entry of a reply.
pub(super) fn id_and_fields(entry: Value) -> Option<(String, Vec<Value>)> {
    let mut parts = elements(entry).into_iter();
    let (id, fields) = (parts.next()?, parts.next()?);
    Some((text(&id)?.to_string(), elements(fields)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(signed: bool) -> WireEnvelope {
        WireEnvelope {
            body: Bytes::from_static(b"{\"id\":\"t1\",\"args\":\"a\\nb\"}"),
            key_id: signed.then(|| "k1".to_string()),
            signature: signed.then(|| "c2ln".to_string()),
            attempt: 3,
        }
    }

    #[test]
    fn packed_entries_round_trip() {
        for signed in [true, false] {
            let w = wire(signed);
            let back = unpack(pack(&w)).expect("unpacks");
            assert_eq!(back.body, w.body);
            assert_eq!(back.key_id, w.key_id);
            assert_eq!(back.signature, w.signature);
            assert_eq!(back.attempt, 3);
        }
    }

    #[test]
    fn a_delayed_member_is_the_band_and_the_packed_entry() {
        let w = wire(true);
        let m = delayed_member(12, &w);
        assert_eq!(m, [b"9\n".as_slice(), &pack(&w)].concat());
    }

    #[test]
    fn malformed_packed_entries_are_rejected_with_their_bytes() {
        for bad in [&b"3\nk1"[..], b"x\nk1\nsig\n{}", b""] {
            let (error, raw) = unpack(bad.to_vec()).expect_err("malformed");
            assert!(!error.is_empty());
            assert_eq!(raw, bad);
        }
    }

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    #[test]
    fn reply_entries_decode_the_packed_form() {
        let w = wire(true);
        match to_fetched("q", 0, "1-0".into(), vec![bulk(b"e"), bulk(&pack(&w))]) {
            Fetched::Task(d) => {
                assert_eq!(d.wire.body, w.body);
                assert_eq!(d.wire.key_id.as_deref(), Some("k1"));
                assert_eq!(d.wire.signature.as_deref(), Some("c2ln"));
                assert_eq!(d.wire.attempt, 3);
            }
            Fetched::Malformed(m) => panic!("malformed: {}", m.error),
        }
    }

    #[test]
    fn other_entries_are_malformed_with_their_fields() {
        let cases: [(Vec<Value>, &str); 3] = [
            (vec![bulk(b"foo"), bulk(b"bar")], r#"{"foo":"bar"}"#),
            (vec![bulk(b"e"), bulk(b"12\nx")], r#"{"e":"12\nx"}"#),
            (
                vec![bulk(b"body"), bulk(b"{}"), bulk(b"attempt"), bulk(b"0")],
                r#"{"attempt":"0","body":"{}"}"#,
            ),
        ];
        for (fields, raw) in cases {
            match to_fetched("q", 0, "1-0".into(), fields) {
                Fetched::Malformed(m) => {
                    assert_eq!(m.raw, raw);
                    assert!(!m.error.is_empty());
                }
                Fetched::Task(_) => panic!("decoded {raw}"),
            }
        }
    }
}
