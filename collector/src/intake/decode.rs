//! OTLP trace exports decoded only within what their decoding may take. A
//! protobuf message grows when decoded (an empty span is 2 bytes on the
//! wire and a few hundred in memory), so a request's size on the wire says
//! little. OTLP/protobuf is read in place, straight into the collector's
//! spans, each span's cost reckoned before it is mapped; OTLP/JSON is sized
//! from its count of objects and arrays before it is decoded.

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue},
    resource::v1::Resource,
    trace::v1::{
        ResourceSpans, ScopeSpans, Span as OtlpSpan,
        span::{Event, Link},
        status::StatusCode,
    },
};

use crate::{
    intake::otlp::{Attrs, MappingStats, Slot, SpanView, Value, map_into, service_name},
    span::Span,
};

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
}

/// What decoding `body` (OTLP/JSON) would take at most: every object or
/// array as the largest message, and its bytes.
pub fn json_size(body: &[u8], limit: usize) -> Result<usize, DecodeError> {
    use std::mem::size_of;
    let largest = [
        size_of::<OtlpSpan>(),
        size_of::<KeyValue>(),
        size_of::<AnyValue>(),
        size_of::<ResourceSpans>(),
        size_of::<ScopeSpans>(),
        size_of::<Event>(),
        size_of::<Link>(),
        size_of::<Resource>(),
    ]
    .into_iter()
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

/// One field of a protobuf message, as read in place.
#[derive(Clone, Copy)]
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32,
    Bytes(&'a [u8]),
}

impl<'a> Field<'a> {
    fn bytes(self, what: &str) -> Result<&'a [u8], DecodeError> {
        match self {
            Self::Bytes(b) => Ok(b),
            _ => Err(wrong_type(what)),
        }
    }

    fn varint(self, what: &str) -> Result<u64, DecodeError> {
        match self {
            Self::Varint(v) => Ok(v),
            _ => Err(wrong_type(what)),
        }
    }

    fn fixed64(self, what: &str) -> Result<u64, DecodeError> {
        match self {
            Self::Fixed64(v) => Ok(v),
            _ => Err(wrong_type(what)),
        }
    }

    fn text(self, what: &str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes(what)?)
            .map_err(|_| DecodeError::Malformed(format!("{what} is not UTF-8")))
    }
}

fn wrong_type(what: &str) -> DecodeError {
    DecodeError::Malformed(format!("{what} has the wrong wire type"))
}

/// The fields of one message, in the order sent.
struct Fields<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn of(b: &'a [u8]) -> Self {
        Self { b, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| DecodeError::Malformed("length past the end".into()))?;
        let taken = self.b.get(self.at..end).unwrap_or_default();
        self.at = end;
        Ok(taken)
    }

    /// The next (field number, field), or `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, DecodeError> {
        if self.at >= self.b.len() {
            return Ok(None);
        }
        let key = varint(self.b, &mut self.at)?;
        let (number, wire) = (key >> 3, key & 7);
        if number == 0 {
            return Err(DecodeError::Malformed("field number 0".into()));
        }
        let field = match wire {
            0 => Field::Varint(varint(self.b, &mut self.at)?),
            1 => {
                let b = self.take(8)?;
                Field::Fixed64(u64::from_le_bytes(b.try_into().unwrap_or_default()))
            }
            5 => {
                self.take(4)?;
                Field::Fixed32
            }
            2 => {
                let len = usize::try_from(varint(self.b, &mut self.at)?)
                    .map_err(|_| DecodeError::Malformed("length too large".into()))?;
                Field::Bytes(self.take(len)?)
            }
            _ => {
                return Err(DecodeError::Malformed(format!(
                    "wire type {wire} is not used by OTLP"
                )));
            }
        };
        Ok(Some((number, field)))
    }
}

/// An attribute's value (`AnyValue`), the last of its fields sent.
fn any_value(b: &[u8]) -> Result<Value<'_>, DecodeError> {
    let mut value = Value::Other;
    let mut fields = Fields::of(b);
    while let Some((n, f)) = fields.next()? {
        value = match n {
            1 => Value::Str(f.text("a string value")?),
            2 => Value::Bool(f.varint("a bool value")? != 0),
            // Two's complement, as protobuf sends an int64.
            3 => Value::Int(f.varint("an int value")? as i64),
            4 => Value::Double(f64::from_bits(f.fixed64("a double value")?)),
            5..=7 => {
                f.bytes("a value")?;
                Value::Other
            }
            _ => value,
        };
    }
    Ok(value)
}

/// Adds a `KeyValue`'s value to `attrs` when the mapping reads it; other
/// values are not even decoded.
fn key_value<'a>(b: &'a [u8], attrs: &mut Attrs<'a>) -> Result<(), DecodeError> {
    let (mut key, mut value) = (&b""[..], None);
    let mut fields = Fields::of(b);
    while let Some((n, f)) = fields.next()? {
        match n {
            1 => key = f.bytes("an attribute's key")?,
            2 => value = Some(f.bytes("an attribute's value")?),
            _ => {}
        }
    }
    if let Some(slot) = Slot::of(key).filter(|s| attrs.wants(*s)) {
        attrs.set(slot, value.map_or(Ok(Value::Other), any_value)?);
    }
    Ok(())
}

fn span_view(b: &[u8]) -> Result<SpanView<'_>, DecodeError> {
    let mut s = SpanView::default();
    let mut fields = Fields::of(b);
    while let Some((n, f)) = fields.next()? {
        match n {
            1 => s.trace_id = f.bytes("a trace id")?,
            2 => s.span_id = f.bytes("a span id")?,
            4 => s.parent_span_id = f.bytes("a parent span id")?,
            5 => s.name = f.text("a span's name")?,
            // An enum: the low 32 bits, as protobuf reads an int32.
            6 => s.kind = f.varint("a span's kind")? as i32,
            7 => s.start_ns = f.fixed64("a start time")?,
            8 => s.end_ns = f.fixed64("an end time")?,
            9 => key_value(f.bytes("an attribute")?, &mut s.attrs)?,
            15 => {
                let mut status = Fields::of(f.bytes("a status")?);
                while let Some((n, f)) = status.next()? {
                    if n == 3 {
                        s.failed = f.varint("a status code")? as i32 == StatusCode::Error as i32;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(s)
}

/// Bytes a mapped span holds beyond its own size: its names, and its
/// vector of tables.
fn heap_bytes(span: &mut Span) -> usize {
    let mut bytes = (span.tables.len() + span.tables.capacity()) * 24;
    span.each_name(|name| bytes += name.capacity());
    bytes
}

/// Spans mapped into one vector: vectors of a size the allocator reuses,
/// where one per request would take fresh memory from the system each time.
pub const CHUNK: usize = 256;

/// Decodes and maps an OTLP/protobuf trace export in place, in chunks of
/// at most [`CHUNK`] spans: nothing of the request is copied but what the
/// mapped spans keep, and only the attributes mapping reads are decoded.
/// What the spans take is reckoned before each is mapped, and a request
/// past `limit` is refused.
pub fn decode_protobuf(
    body: &[u8],
    limit: usize,
    max_name: usize,
) -> Result<(Vec<Vec<Span>>, MappingStats), DecodeError> {
    let mut sizer = Sizer { limit, estimate: 0 };
    let mut stats = MappingStats::default();
    let mut chunks: Vec<Vec<Span>> = Vec::new();
    let mut request = Fields::of(body);
    while let Some((n, f)) = request.next()? {
        if n != 1 {
            continue;
        }
        let resource_spans = f.bytes("resource spans")?;
        // The resource may come after its spans: its name is read first.
        let mut resource = Attrs::default();
        let mut fields = Fields::of(resource_spans);
        while let Some((n, f)) = fields.next()? {
            if n == 1 {
                let mut attrs = Fields::of(f.bytes("a resource")?);
                while let Some((n, f)) = attrs.next()? {
                    if n == 1 {
                        key_value(f.bytes("an attribute")?, &mut resource)?;
                    }
                }
            }
        }
        let service = service_name(&resource, &mut stats, max_name);
        let mut fields = Fields::of(resource_spans);
        while let Some((n, f)) = fields.next()? {
            if n != 2 {
                continue;
            }
            let mut scope = Fields::of(f.bytes("scope spans")?);
            while let Some((n, f)) = scope.next()? {
                if n != 2 {
                    continue;
                }
                let span = f.bytes("a span")?;
                sizer.add(std::mem::size_of::<Span>() + span.len())?;
                if chunks.last().is_none_or(|c| c.len() >= CHUNK) {
                    chunks.push(Vec::new());
                }
                let Some(out) = chunks.last_mut() else {
                    continue;
                };
                map_into(&service, &span_view(span)?, out, &mut stats, max_name);
                // What the span holds once mapped: its names and tables.
                sizer.add(out.last_mut().map_or(0, heap_bytes))?;
            }
        }
    }
    chunks.retain(|c| !c.is_empty());
    Ok((chunks, stats))
}

/// Decodes an OTLP/JSON trace export once it is known to fit `limit`.
pub fn decode_json(body: &[u8], limit: usize) -> Result<ExportTraceServiceRequest, DecodeError> {
    json_size(body, limit)?;
    serde_json::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::otlp::map_request;
    use opentelemetry_proto::tonic::{
        common::v1::{ArrayValue, any_value::Value as V},
        trace::v1::Status,
    };
    use prost::Message as _;

    fn kv(key: &str, v: V) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..KeyValue::default()
        }
    }

    fn s(v: &str) -> V {
        V::StringValue(v.into())
    }

    fn span(n: u8, kind: i32, attributes: Vec<KeyValue>) -> OtlpSpan {
        OtlpSpan {
            trace_id: vec![n; 16],
            span_id: vec![n + 1; 8],
            parent_span_id: if n.is_multiple_of(2) {
                vec![n + 2; 8]
            } else {
                vec![]
            },
            name: format!("span {n}"),
            kind,
            start_time_unix_nano: 1_000 + u64::from(n),
            end_time_unix_nano: 2_000,
            attributes,
            status: n.is_multiple_of(3).then(|| Status {
                code: 2,
                ..Status::default()
            }),
            ..OtlpSpan::default()
        }
    }

    fn request(service: Option<V>, spans: Vec<OtlpSpan>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: service.map(|v| kv("service.name", v)).into_iter().collect(),
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
    }

    /// The same spans and counts as decoding with prost and mapping the
    /// decoded request.
    fn same_as_prost(body: &[u8]) -> (Vec<Span>, MappingStats) {
        let req = ExportTraceServiceRequest::decode(body).expect("prost decodes it");
        let mut want_stats = MappingStats::default();
        let want = map_request(&req, &mut want_stats, 40);
        let (chunks, stats) = decode_protobuf(body, 64 << 20, 40).expect("decoded in place");
        assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= CHUNK));
        let got: Vec<Span> = chunks.into_iter().flatten().collect();
        assert_eq!(got, want);
        assert_eq!(stats, want_stats);
        (got, stats)
    }

    #[test]
    fn spans_read_in_place_are_the_spans_prost_decodes() {
        let spans = vec![
            span(
                1,
                3,
                vec![
                    kv("http.request.method", s("GET")),
                    kv("url.path", s("/orders/42")),
                    kv("http.response.status_code", V::IntValue(503)),
                    kv("server.address", s("orders")),
                    kv("server.port", V::IntValue(8080)),
                    kv("tangle.join.client", s("10.0.0.1:40000")),
                    kv("tangle.join.seq", V::IntValue(3)),
                    kv("unrelated", V::ArrayValue(ArrayValue::default())),
                ],
            ),
            span(
                2,
                3,
                vec![
                    // Older names, a later duplicate that is ignored, a
                    // value that is not text.
                    kv("db.system", s("postgresql")),
                    kv("db.statement", s("UPDATE stock SET n = n - 1 WHERE id = 7")),
                    kv("db.name", s("shop")),
                    kv("db.system", s("mysql")),
                    kv("net.peer.name", V::BytesValue(vec![1, 2])),
                    kv("tangle.link.inferred", V::BoolValue(true)),
                ],
            ),
            span(
                3,
                2,
                vec![
                    kv("rpc.system", s("grpc")),
                    kv("rpc.grpc.status_code", V::IntValue(14)),
                    kv("http.request.method", s("POST")),
                    kv("http.route", s("/pricing.Pricing/Quote")),
                    kv("db.response.status_code", V::DoubleValue(1.5)),
                ],
            ),
            span(
                4,
                4,
                vec![
                    kv("messaging.system", s("redis")),
                    kv(
                        "messaging.destination.name",
                        s("orders-events-with-a-name-longer-than-forty-bytes"),
                    ),
                    kv("peer.service", s("ignored")),
                ],
            ),
            // Bad ids: counted.
            OtlpSpan {
                trace_id: vec![0; 16],
                span_id: vec![1; 8],
                ..OtlpSpan::default()
            },
            OtlpSpan {
                trace_id: vec![1; 15],
                span_id: vec![1; 8],
                ..OtlpSpan::default()
            },
        ];
        for service in [Some(s("checkout")), Some(V::IntValue(7)), None] {
            let body = request(service, spans.clone()).encode_to_vec();
            let (got, stats) = same_as_prost(&body);
            assert_eq!(got.len(), 4);
            assert_eq!(stats.bad_ids, 2);
            assert!(stats.names_cut >= 1, "the long topic name is cut");
        }
    }

    #[test]
    fn a_resource_sent_after_its_spans_still_names_them() {
        let req = request(None, vec![span(1, 2, vec![])]);
        let mut body = req.encode_to_vec();
        // ResourceSpans { scope_spans..., resource } : append the resource.
        let resource = Resource {
            attributes: vec![kv("service.name", s("late"))],
            ..Resource::default()
        }
        .encode_to_vec();
        let mut rs = req.resource_spans[0].encode_to_vec();
        rs.push(0x0a);
        prost::encoding::encode_varint(resource.len() as u64, &mut rs);
        rs.extend(resource);
        body.clear();
        body.push(0x0a);
        prost::encoding::encode_varint(rs.len() as u64, &mut body);
        body.extend(rs);
        let (spans, _) = same_as_prost(&body);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].service, "late");
    }

    /// 400 inputs the `otlp_protobuf` fuzzer kept (copied to
    /// tests/fixtures: the fuzzer's own corpus is not in the repository):
    /// where prost decodes one, reading in place gives the same spans;
    /// nowhere a panic.
    #[test]
    fn the_fuzz_corpus_reads_the_same_in_place() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/otlp-protobuf-corpus");
        let (mut compared, mut spans) = (0, 0);
        for entry in std::fs::read_dir(&dir).expect("the corpus") {
            let body = std::fs::read(entry.unwrap().path()).unwrap();
            let direct = decode_protobuf(&body, 64 << 20, 40);
            if ExportTraceServiceRequest::decode(body.as_slice()).is_ok() {
                spans += same_as_prost(&body).0.len();
                compared += 1;
            } else {
                drop(direct);
            }
        }
        assert!(
            compared > 100 && spans > 100,
            "{compared} inputs, {spans} spans"
        );
    }

    #[test]
    fn what_decoding_takes_is_bounded_before_it_is_taken() {
        let spans = (0..600).map(|i| span((i % 250 + 1) as u8, 2, vec![]));
        let req = request(Some(s("a")), spans.collect());
        let body = req.encode_to_vec();
        let held = std::mem::size_of::<Span>() * 600;
        assert!(matches!(
            decode_protobuf(&body, held, 256),
            Err(DecodeError::TooLarge { limit, .. }) if limit == held
        ));
        let chunks = decode_protobuf(&body, held * 8, 256).unwrap().0;
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            [CHUNK, CHUNK, 600 - 2 * CHUNK]
        );
    }

    /// A megabyte-long namespace before sixteen tables: what the span keeps
    /// is its names cut to `max_name`, not sixteen copies of the namespace.
    #[test]
    fn a_long_namespace_is_not_copied_into_every_table() {
        let tables: Vec<String> = (b'a'..=b'p').map(|c| char::from(c).to_string()).collect();
        let attrs = vec![
            kv("db.system.name", s("postgresql")),
            kv("db.namespace", s(&"n".repeat(1 << 20))),
            kv(
                "db.query.text",
                s(&format!("SELECT * FROM {}", tables.join(", "))),
            ),
        ];
        let body = request(Some(s("db-user")), vec![span(1, 3, attrs)]).encode_to_vec();
        let (mut chunks, stats) = decode_protobuf(&body, 64 << 20, 256).unwrap();
        let span = &mut chunks[0][0];
        assert_eq!(span.tables.len(), 16);
        assert!(stats.names_cut > 0);
        let held = heap_bytes(span);
        assert!(held < 16 << 10, "the span holds {held} bytes");
    }

    #[test]
    fn empty_spans_are_refused_before_they_are_decoded() {
        // 2 bytes per span on the wire: 1 MiB of them would take ~300 MiB.
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
        match decode_protobuf(&body, 32 << 20, 256) {
            Err(DecodeError::TooLarge { limit, .. }) => assert_eq!(limit, 32 << 20),
            other => panic!("not refused: {:?}", other.map(|r| r.1)),
        }
    }

    #[test]
    fn malformed_requests_are_refused_and_nested_values_never_decoded() {
        for bad in [&b"\xff\xff\xff"[..], b"\x0a\x05ab", b"\x0b", b"\x00"] {
            assert!(
                matches!(
                    decode_protobuf(bad, usize::MAX, 256),
                    Err(DecodeError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        // A span attribute nested 100,000 arrays deep: skipped, not walked.
        let mut v = Vec::new();
        for _ in 0..100_000 {
            let mut array = vec![0x0a];
            prost::encoding::encode_varint(v.len() as u64, &mut array);
            array.extend(&v);
            let mut any = vec![0x2a];
            prost::encoding::encode_varint(array.len() as u64, &mut any);
            any.extend(array);
            v = any;
        }
        let mut kv = b"\x0a\x0eserver.address\x12".to_vec();
        prost::encoding::encode_varint(v.len() as u64, &mut kv);
        kv.extend(v);
        let mut span = span(1, 3, vec![]).encode_to_vec();
        span.push(0x4a);
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
        let (spans, stats) = decode_protobuf(&body, usize::MAX, 256).unwrap();
        assert_eq!((spans.len(), stats.bad_ids), (1, 0));
        assert_eq!(spans[0][0].peer, crate::span::Peer::Unknown);
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
