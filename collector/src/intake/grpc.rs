//! OTLP over gRPC: `TraceService/Export`. The token is checked from the
//! request's headers and a slot among the requests in progress taken
//! before the message is read; tonic reads the message's length first and
//! refuses one past the limit without buffering it; the bytes are handed
//! to the intake as they are, to be sized before they are decoded.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
};

use hyper::body::Incoming;

use super::{Intake, Refusal};

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

/// The export's message, taken by the intake.
struct Export(Arc<Intake>);

impl tonic::server::UnaryService<bytes::Bytes> for Export {
    type Response = ();
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<()>, tonic::Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<bytes::Bytes>) -> Self::Future {
        let intake = self.0.clone();
        Box::pin(async move {
            let stats = &intake.stats.grpc;
            match intake.take(request.into_inner(), false).await {
                Ok(_) => {
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    Ok(tonic::Response::new(()))
                }
                Err(refusal) => {
                    Intake::count(stats, &refusal);
                    Err(match refusal {
                        Refusal::TooLarge(m) => tonic::Status::resource_exhausted(m),
                        Refusal::Malformed(m) => tonic::Status::invalid_argument(m),
                        Refusal::Busy(m) => tonic::Status::resource_exhausted(m),
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

async fn receive(
    intake: Arc<Intake>,
    req: hyper::Request<Incoming>,
) -> hyper::Response<tonic::body::Body> {
    let stats = &intake.stats.grpc;
    if req.uri().path() != EXPORT_PATH {
        stats.not_found.fetch_add(1, Ordering::Relaxed);
        return tonic::Status::unimplemented("this receiver takes OTLP trace exports only")
            .into_http();
    }
    let given = req.headers().get("authorization").map(|v| v.as_bytes());
    if !intake.auth.allows(given) {
        stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
        return tonic::Status::unauthenticated("missing or wrong token").into_http();
    }
    let Some(_slot) = intake.admit() else {
        stats.busy.fetch_add(1, Ordering::Relaxed);
        return tonic::Status::resource_exhausted("the collector is busy: retry later").into_http();
    };
    let mut grpc = tonic::server::Grpc::new(RawCodec)
        .max_decoding_message_size(intake.limits.max_request_bytes);
    let answer = tokio::time::timeout(
        intake.request_timeout(),
        grpc.unary(Export(intake.clone()), req),
    )
    .await;
    match answer {
        Ok(response) => {
            // tonic refuses a message past the size limit by itself: count it.
            if response
                .headers()
                .get("grpc-status")
                .is_some_and(|s| s.as_bytes() == b"11")
            {
                stats.too_large.fetch_add(1, Ordering::Relaxed);
            }
            response
        }
        Err(_) => {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
            tonic::Status::deadline_exceeded("the request was not received in time").into_http()
        }
    }
}
