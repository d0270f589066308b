//! OTLP over gRPC: `TraceService/Export`. The token is checked from the
//! request's headers and a slot among the requests in progress taken
//! before the message is read; tonic reads the message's length first and
//! refuses one past the limit without buffering it; the bytes are handed
//! to the intake as they are, to be sized before they are decoded.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use hyper::body::Incoming;

use super::{Intake, Reason, Refusal};

pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A codec that hands the request message over as bytes, undecoded, and
/// answers with an empty `ExportTraceServiceResponse` (no fields: no bytes).
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawDecoder;

struct EmptyEncoder;

impl tonic::codec::Decoder for RawDecoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<bytes::Bytes>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n)))
    }
}

impl tonic::codec::Encoder for EmptyEncoder {
    type Item = ();
    type Error = tonic::Status;

    fn encode(&mut self, _: (), _: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        Ok(())
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = ();
    type Decode = bytes::Bytes;
    type Encoder = EmptyEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> EmptyEncoder {
        EmptyEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// The export's message, taken by the intake. `counted` tells the receiver
/// that this refusal is counted already: any other error status came from
/// tonic itself (the message too large, compressed, or broken).
struct Export {
    intake: Arc<Intake>,
    counted: Arc<AtomicBool>,
}

impl tonic::server::UnaryService<bytes::Bytes> for Export {
    type Response = ();
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<()>, tonic::Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<bytes::Bytes>) -> Self::Future {
        let (intake, counted) = (self.intake.clone(), self.counted.clone());
        Box::pin(async move {
            let stats = &intake.stats.grpc;
            let peer = request.extensions().get::<tangle_listener::Peer>().copied();
            let peer = peer.as_ref();
            counted.store(true, Ordering::Relaxed);
            match intake.take(request.into_inner(), false).await {
                Ok(_) => {
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    Ok(tonic::Response::new(()))
                }
                Err(refusal) => {
                    stats.refuse(peer, refusal.reason(), refusal.message());
                    Err(match refusal {
                        Refusal::TooLarge(m) => tonic::Status::resource_exhausted(m),
                        Refusal::Malformed(m) => tonic::Status::invalid_argument(m),
                        // Retryable by every OTLP exporter.
                        Refusal::Busy(m) => tonic::Status::unavailable(m),
                    })
                }
            }
        })
    }
}

/// The gRPC receiver, as a hyper service.
#[derive(Clone)]
pub struct GrpcReceiver(pub Arc<Intake>);

impl hyper::service::Service<hyper::Request<Incoming>> for GrpcReceiver {
    type Response = hyper::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let intake = self.0.clone();
        Box::pin(async move { Ok(receive(intake, req).await) })
    }
}

/// A client refused for who it is, or for what it asks, has no business
/// keeping its connection: closed once the answer is sent.
fn close_after(req: &hyper::Request<Incoming>) {
    if let Some(close) = req.extensions().get::<tangle_listener::CloseConnection>() {
        close.close();
    }
}

async fn receive(
    intake: Arc<Intake>,
    req: hyper::Request<Incoming>,
) -> hyper::Response<tonic::body::Body> {
    let stats = &intake.stats.grpc;
    let peer = req.extensions().get::<tangle_listener::Peer>().copied();
    let peer = peer.as_ref();
    if req.uri().path() != EXPORT_PATH {
        stats.refuse(peer, Reason::NotFound, req.uri().path());
        close_after(&req);
        return tonic::Status::unimplemented("this receiver takes OTLP trace exports only")
            .into_http();
    }
    let given = req.headers().get("authorization").map(|v| v.as_bytes());
    if !intake.auth.allows(given) {
        stats.refuse(peer, Reason::Unauthenticated, "missing or wrong token");
        close_after(&req);
        return tonic::Status::unauthenticated("missing or wrong token").into_http();
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
        return tonic::Status::unavailable("the collector is busy: retry later").into_http();
    };
    let mut grpc = tonic::server::Grpc::new(RawCodec)
        .max_decoding_message_size(intake.limits.max_request_bytes);
    let counted = Arc::new(AtomicBool::new(false));
    let export = Export {
        intake: intake.clone(),
        counted: counted.clone(),
    };
    let Ok(response) =
        tokio::time::timeout(intake.request_timeout(), grpc.unary(export, req)).await
    else {
        stats.refuse(
            peer,
            Reason::TimedOut,
            "the message was not received within [intake] request_timeout_ms",
        );
        return tonic::Status::deadline_exceeded("the request was not received in time")
            .into_http();
    };
    // An error tonic answered by itself, before the message reached the
    // intake: counted here.
    let status = response
        .headers()
        .get("grpc-status")
        .and_then(|s| s.to_str().ok()?.parse::<i32>().ok())
        .map(tonic::Code::from);
    if let Some(code) = status.filter(|c| *c != tonic::Code::Ok)
        && !counted.load(Ordering::Relaxed)
    {
        let reason = match code {
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => Reason::TooLarge,
            tonic::Code::Unimplemented => Reason::Unsupported,
            _ => Reason::Malformed,
        };
        let message = response
            .headers()
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .unwrap_or("");
        stats.refuse(peer, reason, &format!("{code:?}: {message}"));
    }
    response
}
