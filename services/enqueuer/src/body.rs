//! The API's one JSON body extractor. A `POST` must say it sends JSON
//! (`Content-Type: application/json`, parameters allowed), else 415: a
//! browser sends a cross-site request without a CORS preflight only for
//! the "simple" content types (`text/plain`, forms), so refusing those
//! keeps any web page from enqueueing through a user's browser. Then the
//! body is read (1 MiB cap, 413), must be a JSON object (400 for an empty
//! body, malformed JSON or another value), and is deserialised into the
//! handler's typed request, serde's error naming the field (400).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A request body deserialised into `T` (see the module doc for what is
/// refused and how).
pub(crate) struct JsonBody<T>(pub T);

/// True when `headers` declare a JSON body: `application/json`, any case,
/// with or without parameters such as `charset`.
fn declares_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// `bytes` as a `T`, or the API's 400 saying what is wrong.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.trim_ascii_start().first() {
        None => {
            return Err(ApiError::BadRequest(
                "The request body is empty: send a JSON object.".into(),
            ))
        }
        // Checked first: serde's derived structs also accept an array of
        // their fields in order, which this API does not offer.
        Some(b'{') => {}
        Some(_) => {
            return Err(ApiError::BadRequest(
                "Request body must be a JSON object.".into(),
            ))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.is_data() {
            true => ApiError::BadRequest(format!("\"{path}\": {inner}.")),
            false => ApiError::BadRequest(format!("Malformed JSON: {inner}.")),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::BadRequest(format!("Malformed JSON: {e}.")))?;
    Ok(value)
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !declares_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
                _ => ApiError::BadRequest(format!("Could not read the request body: {rejection}")),
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        delay_ms: Option<u64>,
    }

    fn message(e: ApiError) -> String {
        match e {
            ApiError::BadRequest(m) => m,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn only_json_content_types_are_read() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            declares_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!with("multipart/form-data; boundary=x"));
        assert!(!with("application/jsonx"));
        assert!(!declares_json(&HeaderMap::new()));
    }

    #[test]
    fn bodies_are_objects_of_the_right_types() {
        assert_eq!(
            parse::<Probe>(br#" {"delayMs": 5} "#).expect("ok").delay_ms,
            Some(5)
        );
        assert!(message(parse::<Probe>(b"  ").expect_err("empty")).contains("empty"));
        assert!(message(parse::<Probe>(b"[5]").expect_err("array")).contains("JSON object"));
        assert!(message(parse::<Probe>(b"{\"delayMs\": ").expect_err("eof")).contains("Malformed"));
        assert!(message(parse::<Probe>(b"{} {}").expect_err("trailing")).contains("Malformed"));
        let wrong = message(parse::<Probe>(br#"{"delayMs": "soon"}"#).expect_err("type"));
        assert!(wrong.starts_with("\"delayMs\": invalid type"), "{wrong}");
    }
}
