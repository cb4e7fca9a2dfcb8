//! Redis read and written past the services, gray-box: the packed stream
//! entries (`attempt\nkid\nsig\nbody`) as anyone who can write to a
//! stream could forge or replay them, and the dead letters as an operator
//! tool reads them. The signing and fault tests need exactly this view;
//! everything else goes through the services.

use std::time::Duration;

use anyhow::Context;
use stem::broker::redis::RedisBroker;
use stem::broker::{DeadLetter, QueueAdmin};
use stem::config::TlsConfig;

use crate::wait::poll_until;

/// The packed entries (`attempt\nkid\nsig\nbody`) of stream `key`, oldest
/// first, read with a plain Redis client.
pub async fn packed_entries(url: &str, key: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    Ok(reply
        .ids
        .into_iter()
        .filter_map(|e| match e.map.get("e") {
            Some(redis::Value::BulkString(b)) => Some(b.clone()),
            _ => None,
        })
        .collect())
}

/// Splits a packed entry into `(attempt, kid, sig, body)`.
pub fn unpack(packed: &[u8]) -> anyhow::Result<(String, String, String, Vec<u8>)> {
    let mut parts = packed.splitn(4, |b| *b == b'\n');
    let mut text = || -> anyhow::Result<String> {
        Ok(String::from_utf8(
            parts.next().context("short packed entry")?.to_vec(),
        )?)
    };
    let (attempt, kid, sig) = (text()?, text()?, text()?);
    let body = parts.next().context("packed entry without body")?.to_vec();
    Ok((attempt, kid, sig, body))
}

/// A packed entry from its parts, as a stream writer would forge it.
pub fn pack(attempt: &str, kid: &str, sig: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{attempt}\n{kid}\n{sig}\n").into_bytes();
    m.extend_from_slice(body);
    m
}

/// `XADD key * e packed`, as anyone who can write to the stream can.
pub async fn inject(url: &str, key: &str, packed: &[u8]) -> anyhow::Result<()> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let _: String = redis::cmd("XADD")
        .arg(key)
        .arg("*")
        .arg("e")
        .arg(packed)
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// The broker (and its [`QueueAdmin`] view) on a plain `redis://` URL,
/// for reading dead letters: gray-box, as an operator tool would read them.
pub fn broker(url: &str) -> anyhow::Result<RedisBroker> {
    let client = stem::redis_conn::client(url, &TlsConfig::default())?;
    Ok(RedisBroker::new(client, 1000)?)
}

/// The newest (at most 100) dead letters of `queue`.
pub async fn dead_letters(url: &str, queue: &str) -> anyhow::Result<Vec<DeadLetter>> {
    Ok(broker(url)?.list_dead_letters(queue, 100).await?)
}

/// Polls the dead letters of `queue` until one matches `pred`.
pub async fn wait_dead_letter<P>(
    url: &str,
    queue: &str,
    timeout: Duration,
    pred: P,
) -> anyhow::Result<DeadLetter>
where
    P: Fn(&DeadLetter) -> bool,
{
    let b = broker(url)?;
    let pred = &pred;
    let b = &b;
    poll_until(
        &format!("a matching dead letter in queue {queue}"),
        timeout,
        || async move {
            let letters = b.list_dead_letters(queue, 100).await?;
            Ok(letters.into_iter().find(|l| pred(l)))
        },
    )
    .await
}
