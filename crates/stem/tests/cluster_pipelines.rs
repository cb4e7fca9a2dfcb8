//! Plain pipelines on a real Redis Cluster (`redis_conn`, one pipeline per
//! master): a pipeline naming keys of many slots reads and writes every
//! key, and stays right after the slots of a master move to another one
//! (the cached slot map is then stale: the commands sent to the old master
//! come back `MOVED` and are sent again through the client's routing).

use std::time::Duration;

use stem::config::TlsConfig;
use stem_testkit::RedisCluster;

const KEYS: usize = 300;

fn key(i: usize) -> String {
    format!("pipeline-test:{{{i}}}")
}

async fn set_all(conn: &mut stem::redis_conn::Conn, round: usize) -> anyhow::Result<()> {
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.cmd("SET")
            .arg(key(i))
            .arg(format!("{round}:{i}"))
            .ignore();
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

async fn get_all(conn: &mut stem::redis_conn::Conn) -> anyhow::Result<Vec<String>> {
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.cmd("GET").arg(key(i));
    }
    Ok(pipe.query_async(conn).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_span_slots_and_follow_moved_slots() -> anyhow::Result<()> {
    let cluster = RedisCluster::start()?;
    let endpoint = stem::redis_conn::endpoint(&cluster.url(), &TlsConfig::default())?;
    let mut conn = stem::redis_conn::connection(endpoint, Duration::from_secs(5))?;

    set_all(&mut conn, 1).await?;
    let want: Vec<String> = (0..KEYS).map(|i| format!("1:{i}")).collect();
    assert_eq!(get_all(&mut conn).await?, want);
    let holding: Vec<u64> = cluster
        .masters()
        .into_iter()
        .map(|m| cluster.dbsize(m))
        .collect::<anyhow::Result<_>>()?;
    assert!(
        holding.iter().all(|&n| n > 0),
        "the keys spread over every master: {holding:?}"
    );

    // Half the slots of the first master move to the second, keys and all:
    // a pipeline the stale map sends to the first master now holds
    // commands it still serves and commands it answers MOVED.
    let masters = cluster.masters();
    let (from, to) = (masters[0], masters[1]);
    let before = cluster.dbsize(from)?;
    cluster.move_slots(from, to, Some(2730))?;
    let after = cluster.dbsize(from)?;
    assert!(
        0 < after && after < before,
        "the first master kept some keys: {before} → {after}"
    );

    // The connection still holds the old map: it sends to the old master,
    // which answers MOVED, and the commands go again where they belong.
    let moved = |node: usize| -> anyhow::Result<u64> {
        let stats = cluster.node(node)?.cli(&["INFO", "errorstats"])?;
        Ok(stats
            .lines()
            .find_map(|l| l.strip_prefix("errorstat_MOVED:count="))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0))
    };
    let moved_before = moved(from)?;
    assert_eq!(get_all(&mut conn).await?, want);
    assert!(
        moved(from)? > moved_before,
        "the stale map sent commands to the old master, which answered MOVED"
    );
    set_all(&mut conn, 2).await?;
    let want: Vec<String> = (0..KEYS).map(|i| format!("2:{i}")).collect();
    assert_eq!(get_all(&mut conn).await?, want);
    Ok(())
}
