//! The HTTP enqueue API (CONTRACT §4) as a library, so the `enqueuer`
//! binary and `stem dev` serve the same router.
//!
//! - [`router`]: the axum routes; every body, errors included, is JSON.
//! - [`EnqueuerSettings`]: `PORT`, `ENQUEUER_TLS_*`, `ENQUEUER_AUTOFILL_*`.
//! - [`serve`]: HTTP or HTTPS (optionally requiring client certificates)
//!   with graceful shutdown.
//! - [`autofill`]: the demo traffic generator.

pub mod autofill;
mod error;
mod routes;
mod settings;
mod tls;

pub use error::ApiError;
pub use routes::{router, AppState};
pub use settings::{AutofillSettings, EnqueuerSettings};

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

/// Serves `state` on `settings` until `shutdown` fires.
pub async fn serve(
    settings: &EnqueuerSettings,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr: SocketAddr = ([0, 0, 0, 0], settings.port).into();
    let app = router(state.clone());
    if settings.autofill.enabled {
        tokio::spawn(autofill::run(
            state.stem.clone(),
            settings.autofill.clone(),
            shutdown.clone(),
        ));
    }
    match &settings.tls {
        Some(tls) => {
            let config = tls::server_config(tls)?;
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            let s = shutdown.clone();
            tokio::spawn(async move {
                s.cancelled().await;
                h.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            tracing::info!(
                "Enqueue API listening on https://{addr} (client certificates {})",
                if tls.client_ca.is_some() {
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
