//! The HTTP enqueue API (README "HTTP API (enqueuer)") as a library, so the `enqueuer`
//! binary and `stem dev` serve the same router.
//!
//! - [`router`]: the axum routes; every body, errors included, is JSON.
//! - [`EnqueuerConfig`]: `PORT`, `ENQUEUER_TLS_*`, `ENQUEUER_AUTOFILL_*`.
//! - [`serve`]: HTTP or HTTPS (optionally requiring client certificates)
//!   with graceful shutdown.
//! - [`autofill`]: the demo traffic generator.

pub mod autofill;
mod body;
mod error;
pub mod metrics;
mod routes;
mod settings;
mod tls;

pub use error::ApiError;
pub use routes::{router, AppState};
pub use settings::{AutofillConfig, EnqueuerConfig};

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

/// Bounds every request, reading its body included, by `timeout`: a
/// client that sends its headers and then stalls (or trickles its body)
/// gets a JSON 408 instead of holding a connection and a task for ever.
pub fn with_request_timeout(app: axum::Router, timeout: std::time::Duration) -> axum::Router {
    // The JSON mapping sits outside the timeout, so it sees its 408.
    app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        timeout,
    ))
    .layer(axum::middleware::map_response(json_timeout))
}

/// The timeout layer answers an empty 408; every answer of this API is
/// JSON.
async fn json_timeout(response: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    if response.status() == axum::http::StatusCode::REQUEST_TIMEOUT {
        return ApiError::Timeout.into_response();
    }
    response
}

/// Serves `state` on `settings` until `shutdown` fires.
pub async fn serve(
    settings: &EnqueuerConfig,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr: SocketAddr = ([0, 0, 0, 0], settings.port).into();
    let mut state = state;
    state.allowed_hosts = std::sync::Arc::new(settings.allowed_hosts.clone());
    let app = with_request_timeout(router(state.clone()), settings.request_timeout);
    if settings.autofill.enabled {
        tokio::spawn(autofill::run(
            state.stem.clone(),
            settings.autofill.clone(),
            shutdown.clone(),
        ));
    }
    match &settings.tls {
        Some(tls) => {
            let config = tls.config.clone();
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            let s = shutdown.clone();
            tokio::spawn(async move {
                s.cancelled().await;
                h.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            tracing::info!(
                "Enqueue API listening on https://{addr} (client certificates {})",
                if tls.files.client_ca.is_some() {
                    "required"
                } else {
                    "not required"
                }
            );
            axum_server::bind_rustls(
                addr,
                axum_server::tls_rustls::RustlsConfig::from_config(config),
            )
            .handle(handle)
            .serve(app.into_make_service())
            .await?;
        }
        None => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!("Enqueue API listening on http://{}", listener.local_addr()?);
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await?;
        }
    }
    Ok(())
}
