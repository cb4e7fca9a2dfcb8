//! The canvas: group, chain and chord. Every envelope is signed by the
//! producer when the canvas is built; workers only publish envelopes that
//! were signed in advance (next chain step, chord callback), so workers
//! never need a signing key.
//!
//! - **group**: tasks tagged with header `stem-group-id`; workers record
//!   each terminal result in the group; `GET /group/{id}` aggregates.
//! - **chain**: step i+1 is stored (signed) in the backend and published by
//!   the worker that completes step i; a step reads the previous result
//!   through [`TaskContext::chain_previous`](crate::task::TaskContext).
//!   A failed step cancels the remaining steps.
//! - **chord**: a group plus a stored callback; the worker that records the
//!   last successful result claims the chord once and publishes the
//!   callback, which reads the results through
//!   [`TaskContext::chord_results`](crate::task::TaskContext).

use serde::{Deserialize, Serialize};

use crate::client::{EnqueueRequest, Prepared, Stem};
use crate::envelope::{TaskStatus, WireEnvelope};
use crate::error::{Result, StemError};

/// Header naming a task's group.
pub const GROUP_HEADER: &str = "stem-group-id";
/// Header naming a task's chain.
pub const CHAIN_HEADER: &str = "stem-chain-id";
/// Header with a chain step's index.
pub const CHAIN_INDEX_HEADER: &str = "stem-chain-index";
/// Header with the previous chain step's task id.
pub const CHAIN_PREV_HEADER: &str = "stem-chain-prev";
/// Header naming the chord whose callback this is.
pub const CHORD_HEADER: &str = "stem-chord-id";

/// How long a chain's later steps and a chord's callback are kept signed
/// and stored until their turn comes, and how long the markers that
/// publish each of them at most once live. A day, like
/// [`IDEMPOTENCY_WINDOW`](crate::client::IDEMPOTENCY_WINDOW), but its own
/// figure: it bounds how long a canvas may take from its first task to its
/// last, which has nothing to do with how long a client's idempotency key
/// is remembered.
pub const CANVAS_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Whether `id` has the form [`Stem::group`] or [`Stem::chord`] generates
/// (`grp-` or `chord-` and a UUID).
pub fn is_group_id(id: &str) -> bool {
    id.strip_prefix("grp-")
        .or_else(|| id.strip_prefix("chord-"))
        .is_some_and(crate::envelope::is_task_id)
}

/// A signed envelope kept in the backend until a worker publishes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StoredEnvelope {
    pub queue: String,
    pub priority: u8,
    pub key_id: Option<String>,
    pub signature: Option<String>,
    pub body: String,
}

impl StoredEnvelope {
    pub(crate) fn from_prepared(p: &Prepared) -> Result<Self> {
        Ok(StoredEnvelope {
            queue: p.spec.queue.clone(),
            priority: p.spec.priority,
            key_id: p.wire.key_id.clone(),
            signature: p.wire.signature.clone(),
            body: String::from_utf8(p.wire.body.to_vec())
                .map_err(|e| StemError::Malformed(e.to_string()))?,
        })
    }

    pub(crate) fn wire(&self) -> WireEnvelope {
        WireEnvelope {
            body: bytes::Bytes::from(self.body.clone().into_bytes()),
            key_id: self.key_id.clone(),
            signature: self.signature.clone(),
            attempt: 0,
        }
    }
}

/// Backend key of chain step `index`.
pub(crate) fn chain_step_key(chain_id: &str, index: usize) -> String {
    format!("chain:{chain_id}:{index}")
}
/// Backend key of a chord's callback.
pub(crate) fn chord_callback_key(chord_id: &str) -> String {
    format!("chord:{chord_id}")
}

/// A dispatched group.
#[derive(Clone, Debug)]
pub struct GroupHandle {
    /// Group id (`grp-` and a UUID), under which the backend records the
    /// results.
    pub group_id: String,
    /// Ids of the group's tasks, in the order given.
    pub task_ids: Vec<String>,
}

/// A dispatched chain.
#[derive(Clone, Debug)]
pub struct ChainHandle {
    /// Chain id (`chain-` and a UUID), carried in every step's `stem-chain-id`
    /// header.
    pub chain_id: String,
    /// Step task ids in order; the last one holds the chain's result.
    pub task_ids: Vec<String>,
}

/// A dispatched chord.
#[derive(Clone, Debug)]
pub struct ChordHandle {
    /// Chord id (`chord-` and a UUID); also the group id of its header tasks.
    pub chord_id: String,
    /// Ids of the header tasks, in the order given.
    pub header_ids: Vec<String>,
    /// Id of the callback task, published once every header task succeeded.
    pub callback_id: String,
}

impl Stem {
    fn prepare_all(
        &self,
        requests: Vec<EnqueueRequest>,
        tag: impl Fn(usize, &mut EnqueueRequest),
    ) -> Result<Vec<Prepared>> {
        requests
            .into_iter()
            .enumerate()
            .map(|(i, mut r)| {
                tag(i, &mut r);
                self.prepare(&r.name, r.args, &r.options)
            })
            .collect()
    }

    /// Enqueues `tasks` as one group.
    pub async fn group(&self, tasks: Vec<EnqueueRequest>) -> Result<GroupHandle> {
        if tasks.is_empty() {
            return Err(StemError::InvalidArgument(
                "a group needs at least one task".into(),
            ));
        }
        let group_id = format!("grp-{}", uuid::Uuid::now_v7());
        let prepared = self.prepare_all(tasks, |_, r| {
            r.options
                .headers
                .insert(GROUP_HEADER.into(), group_id.clone());
        })?;
        self.backend()
            .init_group(&group_id, prepared.len() as u64)
            .await?;
        self.submit(&prepared).await?;
        Ok(GroupHandle {
            group_id,
            task_ids: prepared.into_iter().map(|p| p.spec.id).collect(),
        })
    }

    /// Enqueues `steps` to run one after another; each step sees the
    /// previous step's result in [`TaskContext::chain_previous`](crate::task::TaskContext).
    ///
    /// ```
    /// use serde_json::json;
    /// use stem::client::EnqueueRequest;
    ///
    /// # async fn demo(stem: &stem::Stem) -> stem::Result<()> {
    /// let chain = stem
    ///     .chain(vec![
    ///         EnqueueRequest::new("images.fetch", json!({"url": "https://example.com/a.png"})),
    ///         EnqueueRequest::new("images.resize", json!({"width": 64})),
    ///     ])
    ///     .await?;
    /// // The last step's status holds the chain's result.
    /// let last = chain.task_ids.last().expect("two steps");
    /// # let _ = last; Ok(()) }
    /// ```
    pub async fn chain(&self, steps: Vec<EnqueueRequest>) -> Result<ChainHandle> {
        if steps.is_empty() {
            return Err(StemError::InvalidArgument(
                "a chain needs at least one step".into(),
            ));
        }
        let chain_id = format!("chain-{}", uuid::Uuid::now_v7());
        // Ids are assigned in prepare; tag each step after the previous one
        // is known by preparing sequentially.
        let mut prepared: Vec<Prepared> = Vec::with_capacity(steps.len());
        for (i, mut r) in steps.into_iter().enumerate() {
            r.options
                .headers
                .insert(CHAIN_HEADER.into(), chain_id.clone());
            r.options
                .headers
                .insert(CHAIN_INDEX_HEADER.into(), i.to_string());
            if let Some(prev) = prepared.last() {
                r.options
                    .headers
                    .insert(CHAIN_PREV_HEADER.into(), prev.spec.id.clone());
            }
            prepared.push(self.prepare(&r.name, r.args, &r.options)?);
        }
        let ttl = CANVAS_TTL;
        for (i, p) in prepared.iter().enumerate().skip(1) {
            let stored = serde_json::to_vec(&StoredEnvelope::from_prepared(p)?)?;
            self.backend()
                .put_blob(&chain_step_key(&chain_id, i), &stored, ttl)
                .await?;
        }
        // Every step's envelope is signed now and published unchanged
        // later (from the stored blob), so each `queued` status carries the
        // fingerprint of the envelope its step will be delivered as.
        let statuses: Vec<TaskStatus> = prepared.iter().map(Prepared::queued_status).collect();
        self.backend().set_statuses(&statuses).await?;
        self.broker().publish(vec![prepared[0].outgoing()]).await?;
        Ok(ChainHandle {
            chain_id,
            task_ids: prepared.into_iter().map(|p| p.spec.id).collect(),
        })
    }

    /// Enqueues `header` as a group and runs `callback` once all of them
    /// succeeded.
    pub async fn chord(
        &self,
        header: Vec<EnqueueRequest>,
        mut callback: EnqueueRequest,
    ) -> Result<ChordHandle> {
        if header.is_empty() {
            return Err(StemError::InvalidArgument(
                "a chord needs at least one header task".into(),
            ));
        }
        let chord_id = format!("chord-{}", uuid::Uuid::now_v7());
        let prepared = self.prepare_all(header, |_, r| {
            r.options
                .headers
                .insert(GROUP_HEADER.into(), chord_id.clone());
        })?;
        callback
            .options
            .headers
            .insert(CHORD_HEADER.into(), chord_id.clone());
        let cb = self.prepare(&callback.name, callback.args, &callback.options)?;
        let stored = serde_json::to_vec(&StoredEnvelope::from_prepared(&cb)?)?;
        self.backend()
            .put_blob(&chord_callback_key(&chord_id), &stored, CANVAS_TTL)
            .await?;
        self.backend()
            .init_group(&chord_id, prepared.len() as u64)
            .await?;
        self.backend().set_statuses(&[cb.queued_status()]).await?;
        self.submit(&prepared).await?;
        Ok(ChordHandle {
            chord_id,
            header_ids: prepared.into_iter().map(|p| p.spec.id).collect(),
            callback_id: cb.spec.id,
        })
    }
}
