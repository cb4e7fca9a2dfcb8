//! Pub/sub on a Redis Cluster through whichever node answers.
//!
//! A cluster delivers a `PUBLISH` made on any node to the subscribers of
//! every node, so the control plane needs one subscription on any live
//! node, and may publish on any live node. [`AnyNode`] keeps the nodes it
//! knows (the seeds, then what `CLUSTER NODES` of a node it reached says
//! are live) and tries them in turn, starting one further each time, so a
//! lost node is passed over instead of retried for good (issue 24, W6:
//! every worker used to subscribe through the first seed only, and heard
//! nothing once that one node was gone).
//!
//! Plain single-node clients, not the cluster client: the cluster client
//! routes `SUBSCRIBE` by the channel's slot, re-subscribes after a node
//! loss only when other traffic refreshes its slot map, and its recovery
//! after a request for a node it cannot reach starts over at once with no
//! pause (redis 1.8.1, `ReconnectFromInitialConnections`), so a loop
//! around it spins.
//!
//! A subscription ends when its node closes the connection, and — for a
//! node that stops answering without closing it (a host gone from the
//! network) — when a `PING` on it goes unanswered for [`ATTEMPT`]; the
//! caller subscribes again, through the next node.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use redis::{AsyncCommands, Client, Msg, RedisError};

use super::ClusterEndpoint;
use crate::error::Result;

/// How long one node may take to connect and answer.
const ATTEMPT: Duration = Duration::from_secs(2);
/// How often a subscription's node is asked whether it is still there.
const PING_EVERY: Duration = Duration::from_secs(5);

/// The nodes of one cluster that pub/sub goes through.
pub struct AnyNode {
    endpoint: ClusterEndpoint,
    /// Nodes `CLUSTER NODES` last called live (empty before the first
    /// subscription); the seeds are always tried too.
    known: Mutex<Vec<(String, u16)>>,
    /// Where the next round of attempts starts.
    next: AtomicUsize,
}

impl AnyNode {
    /// Pub/sub through the nodes of `endpoint`'s cluster.
    pub fn new(endpoint: ClusterEndpoint) -> Self {
        AnyNode {
            endpoint,
            known: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
        }
    }

    /// The nodes to try, each once: the live nodes last learnt, then the
    /// seeds, rotated one further than the previous round.
    fn candidates(&self) -> Vec<(String, u16)> {
        let mut nodes = self.known.lock().clone();
        for seed in self.endpoint.seed_nodes() {
            if !nodes.contains(seed) {
                nodes.push(seed.clone());
            }
        }
        if !nodes.is_empty() {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % nodes.len();
            nodes.rotate_left(start);
        }
        nodes
    }

    /// Learns the cluster's live nodes from `client`'s node; keeps what
    /// it knew when that node cannot say.
    async fn learn(&self, client: &Client) {
        let asked = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut conn)
                .await
        };
        if let Ok(Ok(text)) = tokio::time::timeout(ATTEMPT, asked).await {
            let live = live_nodes(&text);
            if !live.is_empty() {
                *self.known.lock() = live;
            }
        }
    }

    /// Runs `attempt` on the candidates in turn until one succeeds within
    /// [`ATTEMPT`]; the last error when none does.
    async fn first_answer<T, F, Fut>(&self, what: &str, attempt: F) -> Result<(Client, T)>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let mut last: Option<RedisError> = None;
        for (host, port) in self.candidates() {
            let client = self.endpoint.node_client(&host, port)?;
            match tokio::time::timeout(ATTEMPT, attempt(client.clone())).await {
                Ok(Ok(done)) => return Ok((client, done)),
                Ok(Err(e)) => {
                    tracing::debug!(node = %format!("{host}:{port}"), error = %e, "{what}: node passed over");
                    last = Some(e);
                }
                Err(_) => {
                    tracing::debug!(node = %format!("{host}:{port}"), "{what}: node passed over (no answer)");
                    last = Some(timed_out(what));
                }
            }
        }
        Err(last.unwrap_or_else(|| timed_out(what)).into())
    }

    /// Subscribes to `channel` on the first node that accepts; the stream
    /// ends when that node is lost.
    pub async fn subscribe(&self, channel: &'static str) -> Result<BoxStream<'static, Msg>> {
        let (client, pubsub) = self
            .first_answer("control subscription", |client| async move {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(channel).await?;
                Ok(pubsub)
            })
            .await?;
        self.learn(&client).await;
        let (mut sink, stream) = pubsub.split();
        let lost = async move {
            loop {
                tokio::time::sleep(PING_EVERY).await;
                let pong = tokio::time::timeout(ATTEMPT, sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    break;
                }
            }
        };
        Ok(stream.take_until(Box::pin(lost)).boxed())
    }

    /// Publishes `payload` on `channel` through the first node that
    /// answers.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> Result<()> {
        self.first_answer("control publish", |client| async move {
            let mut conn = client.get_multiplexed_async_connection().await?;
            conn.publish::<_, _, i64>(channel, payload).await?;
            Ok(())
        })
        .await?;
        Ok(())
    }
}

/// An I/O timeout (unavailable, transient) for `what`.
fn timed_out(what: &str) -> RedisError {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what}: no cluster node answered"),
    )
    .into()
}

/// The `host:port` of every node `CLUSTER NODES` (`text`) lists as
/// reachable: not failing, not in handshake, with an address.
fn live_nodes(text: &str) -> Vec<(String, u16)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_id, address, flags) = (fields.next()?, fields.next()?, fields.next()?);
            let down = flags
                .split(',')
                .any(|f| matches!(f, "fail" | "fail?" | "noaddr" | "handshake"));
            if down {
                return None;
            }
            // `ip:port@cport[,hostname]`
            let (host, port) = address.split('@').next()?.rsplit_once(':')?;
            let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
            (!host.is_empty()).then(|| (host.to_string(), port))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_nodes_skip_failing_and_addressless_ones() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,node-b master,fail - 0 0 2 connected 5461-10922
c3 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16383
d4 127.0.0.1:7003@17003 slave,fail? a1 0 0 1 connected
e5 :0@0 master,noaddr - 0 0 4 connected
f6 ::1:7005@17005 slave c3 0 0 3 connected
";
        assert_eq!(
            live_nodes(text),
            [
                ("127.0.0.1".to_string(), 7000),
                ("127.0.0.1".to_string(), 7002),
                ("::1".to_string(), 7005),
            ]
        );
    }
}
