//! The dashboard's own files, compiled into the binary so it works offline
//! and from any directory: the vendored Turbo (see
//! `assets/vendor/turbo/README.md`), the stylesheet and the icon.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

const TURBO: &str = include_str!("../assets/vendor/turbo/turbo.es2017-esm.js");
const CSS: &str = include_str!("../assets/app.css");
const ICON: &str = include_str!("../assets/favicon.svg");

/// `GET /assets/{file}`.
pub(crate) async fn serve(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "turbo.js" => (TURBO, "text/javascript; charset=utf-8"),
        "app.css" => (CSS, "text/css; charset=utf-8"),
        "favicon.svg" => (ICON, "image/svg+xml"),
        _ => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}
