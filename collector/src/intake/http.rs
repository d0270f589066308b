//! OTLP over HTTP: `POST /v1/traces`, protobuf or JSON, answered in kind.
//! The token is checked and a slot taken before the body is read; the body
//! is read up to the size limit within the request timeout.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};

use super::{Intake, Reason, Refusal};

/// The OTLP/HTTP receiver, as a hyper service.
#[derive(Clone)]
pub struct HttpReceiver(pub Arc<Intake>);

impl hyper::service::Service<Request<Incoming>> for HttpReceiver {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let intake = self.0.clone();
        Box::pin(async move {
            let http1 = req.version() < hyper::Version::HTTP_2;
            let close = req
                .extensions()
                .get::<tangle_listener::CloseConnection>()
                .cloned();
            let mut r = receive(intake, req).await;
            // After a refusal (but for busy, which is retried) the
            // connection is not used again: an HTTP/1 body may be partly
            // unread, and a client that was refused has no business
            // keeping an HTTP/2 connection open.
            if r.status().is_client_error() && r.status() != StatusCode::TOO_MANY_REQUESTS {
                if http1 {
                    r.headers_mut().insert(
                        header::CONNECTION,
                        header::HeaderValue::from_static("close"),
                    );
                }
                if let Some(close) = close {
                    close.close();
                }
            }
            Ok(r)
        })
    }
}

fn answer(status: StatusCode, text: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.into() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    r
}

/// A refusal the sender should retry: 429 with a hint of when.
fn busy(text: &str) -> Response<Full<Bytes>> {
    let mut r = answer(StatusCode::TOO_MANY_REQUESTS, text);
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

/// A body past the limit is still read (and thrown away) up to this many
/// times the limit, so that the client reads the refusal instead of a
/// reset; past that it is refused at once.
const DRAIN_FACTOR: u64 = 4;

fn too_large(max: usize) -> Response<Full<Bytes>> {
    answer(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request too large: more than {max} bytes"),
    )
}

enum BodyError {
    TooLarge,
    Broken(hyper::Error),
}

/// The body, if it is at most `max` bytes. A longer one is read on and
/// discarded, up to [`DRAIN_FACTOR`] times `max`, never kept.
async fn read_body(mut body: Incoming, max: usize) -> Result<Bytes, BodyError> {
    let mut kept = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Broken)?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen <= max {
            kept.extend_from_slice(data);
        } else if seen as u64 > DRAIN_FACTOR * max as u64 {
            break;
        }
    }
    if seen > max {
        return Err(BodyError::TooLarge);
    }
    Ok(kept.freeze())
}

async fn receive(intake: Arc<Intake>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let stats = &intake.stats.http;
    let peer = req.extensions().get::<tangle_listener::Peer>().copied();
    let peer = peer.as_ref();
    if req.uri().path() != "/v1/traces" {
        stats.refuse(peer, Reason::NotFound, req.uri().path());
        return answer(
            StatusCode::NOT_FOUND,
            "OTLP trace exports go to POST /v1/traces",
        );
    }
    if req.method() != Method::POST {
        stats.refuse(
            peer,
            Reason::NotFound,
            &format!("method {} (use POST)", req.method()),
        );
        return answer(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if !intake.auth.allows(given) {
        stats.refuse(peer, Reason::Unauthenticated, "missing or wrong token");
        return answer(StatusCode::UNAUTHORIZED, "missing or wrong token");
    }
    if let Some(encoding) = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .filter(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        let encoding = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
        stats.refuse(
            peer,
            Reason::Unsupported,
            &format!("Content-Encoding {encoding}: bodies are taken uncompressed"),
        );
        return answer(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {encoding} is not supported: send the body uncompressed"),
        );
    }
    let max = intake.limits.max_request_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_FACTOR * max as u64) {
        // Far too large to read even to discard it: refused at once.
        stats.refuse(
            peer,
            Reason::TooLarge,
            &format!("a declared length far past [intake] max_request_bytes ({max})"),
        );
        return too_large(max);
    }
    let Some(_slot) = intake.admit() else {
        stats.refuse(
            peer,
            Reason::Busy,
            &format!(
                "[intake] max_requests_in_progress ({}) in progress",
                intake.limits.max_requests_in_progress
            ),
        );
        return busy("the collector is busy: retry later");
    };
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let body = match tokio::time::timeout(intake.request_timeout(), read_body(req.into_body(), max))
        .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(BodyError::TooLarge)) => {
            stats.refuse(
                peer,
                Reason::TooLarge,
                &format!("a body past [intake] max_request_bytes ({max})"),
            );
            return too_large(max);
        }
        Ok(Err(BodyError::Broken(e))) => {
            stats.refuse(peer, Reason::Malformed, &format!("reading the body: {e}"));
            return answer(StatusCode::BAD_REQUEST, format!("reading the body: {e}"));
        }
        Err(_) => {
            stats.refuse(
                peer,
                Reason::TimedOut,
                "the body was not received within [intake] request_timeout_ms",
            );
            return answer(
                StatusCode::REQUEST_TIMEOUT,
                "the body was not received in time",
            );
        }
    };
    match intake.take(body, json).await {
        Ok(_) => {
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            let (content_type, body): (&str, &[u8]) = if json {
                ("application/json", b"{}")
            } else {
                // An empty ExportTraceServiceResponse.
                ("application/x-protobuf", b"")
            };
            let mut r = Response::new(Full::new(Bytes::from_static(body)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(content_type),
            );
            r
        }
        Err(refusal) => {
            stats.refuse(peer, refusal.reason(), refusal.message());
            match refusal {
                Refusal::TooLarge(m) => answer(StatusCode::PAYLOAD_TOO_LARGE, m),
                Refusal::Malformed(m) => answer(StatusCode::BAD_REQUEST, m),
                Refusal::Busy(m) => busy(m),
            }
        }
    }
}
