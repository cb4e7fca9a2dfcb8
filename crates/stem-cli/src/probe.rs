//! `stem probe URL`: GET one URL and exit 0 when it answers 2xx, 69
//! otherwise (no answer within `--timeout`, or another status). Container
//! healthchecks use it, so the image needs no curl; it reads no `STEM_*`
//! configuration.
//!
//! The probe asks the URL itself and nothing else: it ignores the proxy
//! variables (`HTTP_PROXY`, `http_proxy`, `ALL_PROXY`, …), which a
//! container engine may inject from the client's settings and which would
//! send a loopback healthcheck to the proxy, and it follows no redirect,
//! so a 3xx is a failure like any other status that is not 2xx.

use std::time::Duration;

use clap::Args;

use crate::context::parse_duration;
use crate::fail::Exit;

#[derive(Args, Debug)]
pub(crate) struct ProbeArgs {
    /// The URL to GET (http or https; certificates are verified).
    url: String,
    /// How long the answer may take.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    timeout: Duration,
}

pub(crate) fn run(args: ProbeArgs) -> i32 {
    if !(args.url.starts_with("http://") || args.url.starts_with("https://")) {
        eprintln!("error: {:?} is not an http(s) URL", args.url);
        return Exit::Usage.code();
    }
    stem::redis_conn::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return Exit::Software.code();
        }
    };
    runtime.block_on(async {
        let client = match reqwest::Client::builder()
            .timeout(args.timeout)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Software.code();
            }
        };
        match client.get(&args.url).send().await {
            Ok(r) if r.status().is_success() => 0,
            Ok(r) => {
                eprintln!("probe: {} answered {}", args.url, r.status());
                Exit::Unavailable.code()
            }
            Err(e) => {
                eprintln!("probe: {} did not answer: {e}", args.url);
                Exit::Unavailable.code()
            }
        }
    })
}
