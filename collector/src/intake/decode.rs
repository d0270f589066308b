//! OTLP trace exports decoded only once their cost is known. A protobuf
//! message grows when decoded (an empty span is 2 bytes on the wire and a
//! few hundred in memory), so a request's size on the wire says little:
//! before anything is allocated, one pass over the wire format adds up what
//! decoding it would take, and a request past the limit is refused as too
//! large. JSON is sized from its count of objects and arrays.

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList},
    resource::v1::Resource,
    trace::v1::{
        ResourceSpans, ScopeSpans, Span, Status,
        span::{Event, Link},
    },
};

/// Nesting (attribute values in arrays in lists...) past which a request is refused.
const MAX_DEPTH: usize = 32;

/// A request that is not decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Decoding it would take more memory than one request may.
    #[error(
        "request too large: decoding it would take about {estimate} bytes, more than the {limit} allowed; send fewer spans per request"
    )]
    TooLarge { estimate: usize, limit: usize },
    /// The bytes are not an OTLP trace export.
    #[error("not an OTLP trace export: {0}")]
    Malformed(String),
}

/// The message types of a trace export, as far as sizing needs them.
#[derive(Clone, Copy, Debug)]
enum Msg {
    Request,
    ResourceSpans,
    Resource,
    EntityRef,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

impl Msg {
    /// Its size when decoded, before what it points to.
    fn size(self) -> usize {
        use std::mem::size_of;
        match self {
            Self::Request => size_of::<ExportTraceServiceRequest>(),
            Self::ResourceSpans => size_of::<ResourceSpans>(),
            Self::Resource => size_of::<Resource>(),
            Self::EntityRef => size_of::<EntityRef>(),
            Self::ScopeSpans => size_of::<ScopeSpans>(),
            Self::Scope => size_of::<InstrumentationScope>(),
            Self::Span => size_of::<Span>(),
            Self::Event => size_of::<Event>(),
            Self::Link => size_of::<Link>(),
            Self::Status => size_of::<Status>(),
            Self::KeyValue => size_of::<KeyValue>(),
            Self::AnyValue => size_of::<AnyValue>(),
            Self::ArrayValue => size_of::<ArrayValue>(),
            Self::KeyValueList => size_of::<KeyValueList>(),
        }
    }

    /// The message type of field `field`, if it holds one.
    fn child(self, field: u64) -> Option<Self> {
        Some(match (self, field) {
            (Self::Request, 1) => Self::ResourceSpans,
            (Self::ResourceSpans, 1) => Self::Resource,
            (Self::ResourceSpans, 2) => Self::ScopeSpans,
            (Self::Resource, 1) => Self::KeyValue,
            (Self::Resource, 3) => Self::EntityRef,
            (Self::ScopeSpans, 1) => Self::Scope,
            (Self::ScopeSpans, 2) => Self::Span,
            (Self::Scope, 3) => Self::KeyValue,
            (Self::Span, 9) => Self::KeyValue,
            (Self::Span, 11) => Self::Event,
            (Self::Span, 13) => Self::Link,
            (Self::Span, 15) => Self::Status,
            (Self::Event, 3) => Self::KeyValue,
            (Self::Link, 4) => Self::KeyValue,
            (Self::KeyValue, 2) => Self::AnyValue,
            (Self::AnyValue, 5) => Self::ArrayValue,
            (Self::AnyValue, 6) => Self::KeyValueList,
            (Self::ArrayValue, 1) => Self::AnyValue,
            (Self::KeyValueList, 1) => Self::KeyValue,
            _ => return None,
        })
    }
}

/// Reads a varint at `*at`, moving past it.
fn varint(b: &[u8], at: &mut usize) -> Result<u64, DecodeError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b
            .get(*at)
            .ok_or_else(|| DecodeError::Malformed("truncated varint".into()))?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DecodeError::Malformed("varint too long".into()))
}

struct Sizer {
    limit: usize,
    estimate: usize,
}

impl Sizer {
    fn add(&mut self, n: usize) -> Result<(), DecodeError> {
        // Vectors grow by doubling: what they hold may take twice its size.
        self.estimate = self.estimate.saturating_add(n.saturating_mul(2));
        if self.estimate > self.limit {
            return Err(DecodeError::TooLarge {
                estimate: self.estimate,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// Sizes one message of type `msg`, `b` being its encoded fields.
    fn message(&mut self, msg: Msg, b: &[u8], depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::Malformed(format!(
                "nested more than {MAX_DEPTH} deep"
            )));
        }
        self.add(msg.size())?;
        let mut at = 0;
        while at < b.len() {
            let key = varint(b, &mut at)?;
            let (field, wire) = (key >> 3, key & 7);
            if field == 0 {
                return Err(DecodeError::Malformed("field number 0".into()));
            }
            match wire {
                0 => {
                    varint(b, &mut at)?;
                }
                1 => at += 8,
                5 => at += 4,
                2 => {
                    let len = usize::try_from(varint(b, &mut at)?)
                        .map_err(|_| DecodeError::Malformed("length too large".into()))?;
                    let end = at
                        .checked_add(len)
                        .filter(|&e| e <= b.len())
                        .ok_or_else(|| DecodeError::Malformed("length past the end".into()))?;
                    let inner = b.get(at..end).unwrap_or_default();
                    match msg.child(field) {
                        Some(child) => self.message(child, inner, depth + 1)?,
                        // A string or bytes (or a message Tangle does not
                        // know, counted as one): its bytes and a vector.
                        None => self.add(len + 24)?,
                    }
                    at = end;
                }
                _ => {
                    return Err(DecodeError::Malformed(format!(
                        "wire type {wire} is not used by OTLP"
                    )));
                }
            }
        }
        if at > b.len() {
            return Err(DecodeError::Malformed("field past the end".into()));
        }
        Ok(())
    }
}

/// What decoding `body` (protobuf) would take, or why not to.
pub fn protobuf_size(body: &[u8], limit: usize) -> Result<usize, DecodeError> {
    let mut sizer = Sizer { limit, estimate: 0 };
    sizer.message(Msg::Request, body, 0)?;
    Ok(sizer.estimate)
}

/// What decoding `body` (OTLP/JSON) would take at most: every object or
/// array as the largest message, and its bytes.
pub fn json_size(body: &[u8], limit: usize) -> Result<usize, DecodeError> {
    let largest = [
        Msg::Span,
        Msg::KeyValue,
        Msg::AnyValue,
        Msg::ResourceSpans,
        Msg::ScopeSpans,
        Msg::Event,
        Msg::Link,
        Msg::Resource,
        Msg::Scope,
    ]
    .iter()
    .map(|m| m.size())
    .max()
    .unwrap_or(256);
    let containers = body.iter().filter(|&&c| c == b'{' || c == b'[').count();
    let estimate = containers
        .saturating_mul(largest)
        .saturating_mul(2)
        .saturating_add(body.len());
    if estimate > limit {
        return Err(DecodeError::TooLarge { estimate, limit });
    }
    Ok(estimate)
}

/// Decodes an OTLP/protobuf trace export once it is known to fit `limit`.
pub fn decode_protobuf(
    body: &[u8],
    limit: usize,
) -> Result<ExportTraceServiceRequest, DecodeError> {
    protobuf_size(body, limit)?;
    prost::Message::decode(body).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Decodes an OTLP/JSON trace export once it is known to fit `limit`.
pub fn decode_json(body: &[u8], limit: usize) -> Result<ExportTraceServiceRequest, DecodeError> {
    json_size(body, limit)?;
    serde_json::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn spans(n: usize, attrs: usize) -> ExportTraceServiceRequest {
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "GET /x".into(),
            attributes: (0..attrs)
                .map(|i| KeyValue {
                    key: format!("k{i}"),
                    value: Some(AnyValue {
                        value: Some(
                            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                                "v".into(),
                            ),
                        ),
                    }),
                    ..KeyValue::default()
                })
                .collect(),
            ..Span::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span; n],
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
    }

    #[test]
    fn the_estimate_bounds_what_decoding_takes() {
        let req = spans(1000, 10);
        let body = req.encode_to_vec();
        let estimate = protobuf_size(&body, usize::MAX).unwrap();
        // What the decoded request holds, counted by hand.
        let held = std::mem::size_of::<Span>() * 1000 + 1000 * 10 * std::mem::size_of::<KeyValue>();
        assert!(estimate >= held, "{estimate} < {held}");
        assert!(estimate < held * 8, "{estimate} is far above {held}");
        assert_eq!(decode_protobuf(&body, usize::MAX).unwrap(), req);
    }

    #[test]
    fn empty_spans_are_refused_before_they_are_decoded() {
        // 2 bytes per span on the wire: 1 MiB of them would take ~200 MiB.
        let mut body = Vec::new();
        let mut scope = Vec::new();
        for _ in 0..500_000 {
            scope.extend([0x12, 0x00]);
        }
        let mut rs = vec![0x12];
        prost::encoding::encode_varint(scope.len() as u64, &mut rs);
        rs.extend(scope);
        body.push(0x0a);
        prost::encoding::encode_varint(rs.len() as u64, &mut body);
        body.extend(rs);
        match decode_protobuf(&body, 32 << 20) {
            Err(DecodeError::TooLarge { limit, .. }) => assert_eq!(limit, 32 << 20),
            other => panic!("not refused: {:?}", other.map(|r| r.resource_spans.len())),
        }
    }

    #[test]
    fn malformed_and_deep_requests_are_refused() {
        for bad in [&b"\xff\xff\xff"[..], b"\x0a\x05ab", b"\x0b", b"\x00"] {
            assert!(
                matches!(
                    protobuf_size(bad, usize::MAX),
                    Err(DecodeError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        // An attribute value nested 40 arrays deep.
        let mut v = Vec::new();
        for _ in 0..40 {
            let mut array = vec![0x0a];
            prost::encoding::encode_varint(v.len() as u64, &mut array);
            array.extend(&v);
            let mut any = vec![0x2a];
            prost::encoding::encode_varint(array.len() as u64, &mut any);
            any.extend(array);
            v = any;
        }
        let req = ExportTraceServiceRequest::default().encode_to_vec();
        assert_eq!(protobuf_size(&req, usize::MAX), Ok(2 * Msg::Request.size()));
        let mut kv = vec![0x12];
        prost::encoding::encode_varint(v.len() as u64, &mut kv);
        kv.extend(v);
        let mut span = vec![0x4a];
        prost::encoding::encode_varint(kv.len() as u64, &mut span);
        span.extend(kv);
        let mut scope = vec![0x12];
        prost::encoding::encode_varint(span.len() as u64, &mut scope);
        scope.extend(span);
        let mut rs = vec![0x12];
        prost::encoding::encode_varint(scope.len() as u64, &mut rs);
        rs.extend(scope);
        let mut body = vec![0x0a];
        prost::encoding::encode_varint(rs.len() as u64, &mut body);
        body.extend(rs);
        assert!(matches!(
            protobuf_size(&body, usize::MAX),
            Err(DecodeError::Malformed(m)) if m.contains("nested")
        ));
    }

    #[test]
    fn json_is_sized_by_its_objects() {
        let empty_spans = format!(
            "{{\"resourceSpans\":[{{\"scopeSpans\":[{{\"spans\":[{}]}}]}}]}}",
            vec!["{}"; 100_000].join(",")
        );
        assert!(matches!(
            decode_json(empty_spans.as_bytes(), 16 << 20),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(decode_json(b"{\"resourceSpans\":[]}", 16 << 20).is_ok());
    }
}
