//! Measurement helpers: medians and percentiles, Redis `INFO` sections,
//! and process CPU time and memory from `/proc`.

use std::collections::BTreeMap;

use stem_testkit::RedisServer;

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The `p`-th percentile (0–100) of sorted-on-demand samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// `INFO <section>` as key → value.
pub fn info(redis: &RedisServer, section: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let text = redis.cli(&["INFO", section])?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// Seconds of CPU the Redis server has used (user + system).
pub fn redis_cpu(redis: &RedisServer) -> anyhow::Result<f64> {
    let i = info(redis, "cpu")?;
    let get = |k: &str| i.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok(get("used_cpu_user") + get("used_cpu_sys"))
}

/// Calls and microseconds per command from `INFO commandstats`
/// (`cmdstat_xadd:calls=…,usec=…`).
pub fn command_calls(redis: &RedisServer) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let i = info(redis, "commandstats")?;
    Ok(i.into_iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("cmdstat_")?.to_string();
            let field = |f: &str| -> Option<u64> {
                v.split(',').find_map(|kv| kv.strip_prefix(f))?.parse().ok()
            };
            Some((name, (field("calls=")?, field("usec=")?)))
        })
        .collect())
}

/// CPU seconds (user + system) of process `pid` ("self" for this one).
pub fn process_cpu(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat: 11 and 12 after ')'.
    Ok((ticks(11) + ticks(12)) / 100.0)
}

/// `VmRSS` and `VmHWM` (peak) of process `pid`, in MiB.
pub fn process_memory(pid: &str) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0))
}
