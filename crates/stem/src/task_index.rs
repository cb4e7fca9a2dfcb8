//! What the recent-task index stores for one task (see [`crate::recent`]
//! for the index and the query over it): the spec body itself while it is
//! small, else a bounded preview. A leaf, so that every broker adapter can
//! write the index on its publish path without reaching up to the query,
//! which itself reads through the broker.

use bytes::Bytes;

use crate::envelope::TaskSpec;

/// Largest spec body the index keeps whole; a larger one is indexed as a
/// preview ([`index_body`]).
pub const INDEX_BODY_MAX: usize = 2048;
/// How much of a long task's args (JSON text) its preview keeps.
pub const ARGS_PREVIEW: usize = 1024;
/// How much of a long task name a preview keeps.
const NAME_PREVIEW: usize = 200;
/// Largest meta (JSON text) a preview keeps; a larger one is left out.
const META_PREVIEW: usize = 512;

/// What the index stores for a task whose spec body is `body`: the body
/// itself up to [`INDEX_BODY_MAX`] bytes (the hot path: a length check),
/// else a preview of it; `None` for a body that is no spec (nothing to
/// list).
pub fn index_body(body: &Bytes) -> Option<Bytes> {
    if body.len() <= INDEX_BODY_MAX {
        return Some(body.clone());
    }
    let spec = TaskSpec::from_body(body).ok()?;
    let args = serde_json::to_string(&spec.args).ok()?;
    let meta_fits = serde_json::to_string(&spec.meta)
        .map(|m| m.len() <= META_PREVIEW)
        .unwrap_or(false);
    let preview = TaskSpec {
        name: cut(&spec.name, NAME_PREVIEW),
        args: serde_json::Value::String(cut(&args, ARGS_PREVIEW)),
        // The trace link needs traceparent; other headers may be large.
        headers: spec
            .headers
            .into_iter()
            .filter(|(k, v)| k == crate::trace::TRACEPARENT_HEADER && v.len() <= 64)
            .collect(),
        meta: if meta_fits {
            spec.meta
        } else {
            Default::default()
        },
        ..spec
    };
    let mut doc = serde_json::to_value(&preview).ok()?;
    doc.as_object_mut()?
        .insert(TRUNCATED_FIELD.into(), (body.len() as u64).into());
    serde_json::to_vec(&doc).ok().map(Bytes::from)
}

/// The preview's field holding the whole body's size in bytes.
pub(crate) const TRUNCATED_FIELD: &str = "indexTruncated";

/// The longest prefix of `s` of at most `max` bytes ending on a character
/// boundary, with `…` when something was cut.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
