//! A fault-injection TCP proxy for crash-window and stall tests.
//!
//! [`FaultProxy`] sits between one client process and a real
//! `redis-server`: the client is pointed at the proxy's port, the proxy
//! forwards every byte both ways. When the bytes the client sends match a
//! [`Pattern`] (for example the key `stem:group:<gid>:results` of the
//! worker's group-result write), the proxy applies a [`Fault`] *before*
//! forwarding that chunk:
//!
//! - [`Fault::Kill`]: SIGKILL the client process (a crash exactly before
//!   that command reaches Redis), then drop the connection;
//! - [`Fault::Cut`]: close the connection (a network cut);
//! - [`Fault::Hold`]: hold that chunk and everything after it on the
//!   connection for a while (a stall longer than the client's timeouts),
//!   then forward it.
//!
//! Matching is on the client-to-server byte stream of each connection, with
//! a window that spans read boundaries, so a pattern split across two reads
//! still matches. Each rule fires a bounded number of times (once by
//! default), after letting a given number of matches pass.
//!
//! The proxy runs on its own thread with its own tokio runtime, so a test
//! that blocks its own runtime (or uses a current-thread one) does not stall
//! the traffic it is observing. Dropping the proxy stops it and closes every
//! connection.

use parking_lot::Mutex;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the client must have sent for a rule to fire: every part, in order,
/// within one window of the byte stream (RESP separates a command's name
/// from its arguments with length prefixes, so `["HSET", "stem:group:"]`
/// rather than `"HSET stem:group:"`).
#[derive(Clone, Debug)]
pub struct Pattern {
    parts: Vec<Vec<u8>>,
}

impl Pattern {
    /// Matches bytes containing `needle`.
    pub fn contains(needle: impl AsRef<[u8]>) -> Self {
        Pattern {
            parts: vec![needle.as_ref().to_vec()],
        }
    }

    /// Matches bytes containing every one of `parts`, in this order.
    pub fn all<S: AsRef<[u8]>>(parts: &[S]) -> Self {
        Pattern {
            parts: parts.iter().map(|p| p.as_ref().to_vec()).collect(),
        }
    }

    fn longest(&self) -> usize {
        self.parts.iter().map(Vec::len).sum::<usize>()
    }

    /// Whether `hay` contains the parts in order.
    fn matches(&self, hay: &[u8]) -> bool {
        let mut from = 0;
        for p in &self.parts {
            match find(&hay[from..], p) {
                Some(at) => from += at + p.len(),
                None => return false,
            }
        }
        true
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The process a [`Fault::Kill`] rule kills, named once it is known: a
/// rule must be in place before its client starts (or the client could
/// send the matching command first), and the client's pid exists only
/// after it started.
#[derive(Clone, Debug, Default)]
pub struct Victim(Arc<std::sync::OnceLock<u32>>);

impl Victim {
    /// A victim whose pid is not known yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names the process to kill.
    pub fn is(&self, pid: u32) {
        let _ = self.0.set(pid);
    }
}

/// What the proxy does when a rule matches.
#[derive(Clone, Debug)]
pub enum Fault {
    /// SIGKILL the victim process (the client), then close the connection
    /// without forwarding the matching chunk. A match before the victim is
    /// named holds the chunk until it is.
    Kill(Victim),
    /// Close the connection without forwarding the matching chunk.
    Cut,
    /// Wait this long, then forward the chunk and go on.
    Hold(Duration),
}

/// A pattern, the fault it triggers, and how often.
#[derive(Debug)]
struct Rule {
    pattern: Pattern,
    fault: Fault,
    /// Matches to let through before the first firing.
    skip: usize,
    /// Firings left.
    left: usize,
    seen: usize,
}

#[derive(Default)]
struct State {
    rules: Mutex<Vec<Rule>>,
    fired: AtomicUsize,
    stopped: AtomicBool,
}

impl State {
    /// The fault of the first live rule that `window` matches, if any.
    fn check(&self, window: &[u8]) -> Option<Fault> {
        let mut rules = self.rules.lock();
        for r in rules.iter_mut() {
            if r.left == 0 || !r.pattern.matches(window) {
                continue;
            }
            r.seen += 1;
            if r.seen <= r.skip {
                continue;
            }
            r.left -= 1;
            self.fired.fetch_add(1, Ordering::SeqCst);
            return Some(r.fault.clone());
        }
        None
    }

    fn window(&self) -> usize {
        let rules = self.rules.lock();
        rules.iter().map(|r| r.pattern.longest()).max().unwrap_or(0)
    }
}

/// A TCP proxy to `127.0.0.1:<upstream>` that injects faults (see the
/// module documentation).
pub struct FaultProxy {
    port: u16,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("port", &self.port)
            .field("fired", &self.fired())
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port that forwards to
    /// `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> anyhow::Result<Self> {
        let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding the fault proxy to 127.0.0.1:0")?;
        std_listener
            .set_nonblocking(true)
            .context("making the proxy listener non-blocking")?;
        let port = std_listener.local_addr()?.port();
        let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream_port));
        let state = Arc::new(State::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{port}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("fault proxy: no tokio runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("fault proxy: listener: {e}");
                            return;
                        }
                    };
                    let accept = async {
                        loop {
                            let Ok((client, _)) = listener.accept().await else {
                                continue;
                            };
                            tokio::spawn(serve(client, upstream, st.clone()));
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = rx => {}
                    }
                    st.stopped.store(true, Ordering::SeqCst);
                });
                // Dropping the runtime aborts every connection task.
            })
            .context("spawning the fault proxy thread")?;
        Ok(FaultProxy {
            port,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<proxy port>/<db>`.
    pub fn url_db(&self, db: u8) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// `redis://127.0.0.1:<proxy port>/0`.
    pub fn url(&self) -> String {
        self.url_db(0)
    }

    /// Applies `fault` the first time the client sends bytes matching
    /// `pattern`.
    pub fn once(&self, pattern: Pattern, fault: Fault) {
        self.rule(pattern, fault, 0, 1);
    }

    /// Applies `fault` up to `times` times to matches of `pattern`, after
    /// letting the first `skip` matches through untouched.
    pub fn rule(&self, pattern: Pattern, fault: Fault, skip: usize, times: usize) {
        self.state.rules.lock().push(Rule {
            pattern,
            fault,
            skip,
            left: times,
            seen: 0,
        });
    }

    /// Removes every rule; traffic flows untouched from now on.
    pub fn clear(&self) {
        self.state.rules.lock().clear();
    }

    /// How many times a rule has fired so far.
    pub fn fired(&self) -> usize {
        self.state.fired.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends SIGKILL to `pid` through the `kill` command (procps) and waits
/// for it to be delivered.
fn sigkill(pid: u32) {
    match std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("fault proxy: kill -KILL {pid} exited with {s}"),
        Err(e) => eprintln!("fault proxy: cannot run `kill` (install procps): {e}"),
    }
}

async fn serve(client: TcpStream, upstream: SocketAddr, state: Arc<State>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    // The tail of what came before, so a pattern split across two reads
    // still matches.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = match cr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let mut window = std::mem::take(&mut tail);
        window.extend_from_slice(chunk);
        match state.check(&window) {
            Some(Fault::Kill(victim)) => {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while victim.0.get().is_none() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                match victim.0.get() {
                    Some(pid) => sigkill(*pid),
                    None => eprintln!("fault proxy: a kill rule matched but no victim was named"),
                }
                break;
            }
            Some(Fault::Cut) => break,
            Some(Fault::Hold(d)) => tokio::time::sleep(d).await,
            None => {}
        }
        if sw.write_all(chunk).await.is_err() {
            break;
        }
        let keep = state.window().saturating_sub(1).min(window.len());
        tail = window.split_off(window.len() - keep);
    }
    down.abort();
    let _ = sw.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_parts_in_order() {
        let p = Pattern::all(&["HSET", "stem:group:"]);
        assert!(p.matches(b"*4\r\n$4\r\nHSET\r\n$20\r\nstem:group:g:results"));
        assert!(!p.matches(b"stem:group:g HSET"));
        assert!(Pattern::contains("XADD").matches(b"..XADD.."));
        assert!(!Pattern::contains("XADD").matches(b"XAD"));
    }

    #[test]
    fn a_rule_fires_after_its_skips_and_at_most_its_times() {
        let s = State::default();
        s.rules.lock().push(Rule {
            pattern: Pattern::contains("X"),
            fault: Fault::Cut,
            skip: 1,
            left: 1,
            seen: 0,
        });
        assert!(s.check(b"X").is_none(), "first match is skipped");
        assert!(s.check(b"X").is_some(), "second match fires");
        assert!(s.check(b"X").is_none(), "fired its one time");
        assert_eq!(s.fired.load(Ordering::SeqCst), 1);
    }
}
