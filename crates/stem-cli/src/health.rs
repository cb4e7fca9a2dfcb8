//! `stem health`: is each store reachable? Broker, result backend and
//! schedule store are each asked once (bounded by `--timeout`); exit 0 when
//! all answer, 69 otherwise.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use stem::config::StoreUrl;

use crate::context::{parse_duration, Ctx};
use crate::fail::Exit;
use crate::output::{print_json, Format, Table};

#[derive(Args, Debug)]
pub(crate) struct HealthArgs {
    /// How long each check may take.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    format: Format,
}

/// One checked component.
#[derive(Serialize)]
struct Check {
    component: &'static str,
    /// `ok` or `error`.
    status: &'static str,
    message: String,
}

async fn check<F>(component: &'static str, url: &StoreUrl, timeout: Duration, f: F) -> Check
where
    F: std::future::Future<Output = stem::Result<()>>,
{
    let started = Instant::now();
    let (status, message) = match tokio::time::timeout(timeout, f).await {
        Ok(Ok(())) => (
            "ok",
            format!(
                "{} answered in {} ms",
                url.redacted(),
                started.elapsed().as_millis()
            ),
        ),
        Ok(Err(e)) => ("error", format!("{}: {e}", url.redacted())),
        Err(_) => (
            "error",
            format!(
                "{}: no answer within {} ms",
                url.redacted(),
                timeout.as_millis()
            ),
        ),
    };
    Check {
        component,
        status,
        message,
    }
}

pub(crate) async fn run(ctx: &Ctx, args: HealthArgs) -> anyhow::Result<i32> {
    let stem = ctx.consumer()?;
    let stores = ctx.schedules()?;
    let (broker, backend, schedules) = (stem.broker(), stem.backend(), stores.schedules);
    let c = &ctx.config;
    let (b, r, s) = tokio::join!(
        check("broker", &c.broker_url, args.timeout, broker.ping()),
        check(
            "backend",
            &c.result_backend_url,
            args.timeout,
            backend.ping()
        ),
        check(
            "schedule-store",
            &c.schedule_store_url,
            args.timeout,
            async { schedules.next_run_at().await.map(|_| ()) }
        ),
    );
    let checks = [b, r, s];
    if args.format.json {
        print_json(&checks)?;
    } else {
        let mut t = Table::new(&["Component", "Status", "Message"]);
        for ch in &checks {
            t.row(vec![
                ch.component.into(),
                ch.status.into(),
                ch.message.clone(),
            ]);
        }
        t.print();
    }
    if checks.iter().all(|c| c.status == "ok") {
        Ok(0)
    } else {
        Ok(Exit::Unavailable.code())
    }
}
