//! Span records into OTLP's protobuf encoding (`ExportTraceServiceRequest`),
//! written straight to bytes on the export thread: no message structs, no
//! allocation per attribute. A batch keeps each span's bytes apart, so a
//! request the collector finds too large splits without re-encoding.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use tangle_protocols::Fields;
use tangle_wire::attr;

use crate::{
    identity::Identity,
    spans::{Outgoing, SpanRecord},
};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_tag(buf: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(buf, u64::from(field << 3 | u32::from(wire)));
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_tag(buf, field, LEN);
    put_varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

fn put_fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    put_tag(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_uint(buf: &mut Vec<u8>, field: u32, v: u64) {
    put_tag(buf, field, VARINT);
    put_varint(buf, v);
}

/// `v` in decimal, appended to `out`.
fn push_decimal(out: &mut String, v: u32) {
    let mut digits = [0u8; 10];
    let mut n = v;
    let mut at = digits.len();
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    for &d in digits.get(at..).unwrap_or_default() {
        out.push(char::from(d));
    }
}

/// An attribute's value (`AnyValue`).
enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
}

impl Value<'_> {
    /// The encoded `AnyValue`'s length.
    fn len(&self) -> usize {
        match self {
            Self::Str(s) => 1 + varint_len(s.len() as u64) + s.len(),
            Self::Int(i) => 1 + varint_len(*i as u64),
            Self::Bool(_) => 2,
        }
    }
}

/// A `KeyValue` as field `field` (9 of a span, 1 of a resource).
fn put_attr(buf: &mut Vec<u8>, field: u32, key: &str, value: Value<'_>) {
    let any = value.len();
    let kv = 1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(any as u64) + any;
    put_tag(buf, field, LEN);
    put_varint(buf, kv as u64);
    put_bytes(buf, 1, key.as_bytes());
    put_tag(buf, 2, LEN);
    put_varint(buf, any as u64);
    match value {
        Value::Str(s) => put_bytes(buf, 1, s.as_bytes()),
        Value::Bool(b) => put_uint(buf, 2, u64::from(b)),
        Value::Int(i) => put_uint(buf, 3, i as u64),
    }
}

/// Writes one span's fields (a `Span` message's body) to `buf`.
struct SpanWriter<'a> {
    buf: &'a mut Vec<u8>,
    text: &'a mut String,
}

impl SpanWriter<'_> {
    fn str(&mut self, key: &str, v: &str) {
        put_attr(self.buf, 9, key, Value::Str(v));
    }

    fn int(&mut self, key: &str, v: i64) {
        put_attr(self.buf, 9, key, Value::Int(v));
    }

    fn bool(&mut self, key: &str, v: bool) {
        put_attr(self.buf, 9, key, Value::Bool(v));
    }

    /// An address as text: `ip`, or `ip:port` with `port`.
    fn address(&mut self, key: &str, ip: IpAddr, port: Option<u16>) {
        self.text.clear();
        match ip {
            // Most addresses: written digit by digit, not through `fmt`
            // (which was a twentieth of the agent's time).
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.text.push('.');
                    }
                    push_decimal(self.text, u32::from(octet));
                }
                if let Some(port) = port {
                    self.text.push(':');
                    push_decimal(self.text, u32::from(port));
                }
            }
            IpAddr::V6(v6) => {
                let _ = match port {
                    Some(port) => write!(self.text, "[{v6}]:{port}"),
                    None => write!(self.text, "{v6}"),
                };
            }
        }
        put_attr(self.buf, 9, key, Value::Str(self.text));
    }

    fn addr(&mut self, address: &str, port: &str, a: SocketAddr) {
        self.address(address, a.ip(), None);
        self.int(port, i64::from(a.port()));
    }

    fn span(&mut self, s: &SpanRecord) {
        put_bytes(self.buf, 1, &s.trace_id);
        put_bytes(self.buf, 2, &s.span_id);
        if let Some(p) = &s.parent_span_id {
            put_bytes(self.buf, 4, p);
        }
        put_bytes(self.buf, 5, s.operation.as_bytes());
        put_uint(self.buf, 6, s.kind as u64);
        put_fixed64(self.buf, 7, s.start_ns);
        put_fixed64(self.buf, 8, s.end_ns);
        if let Some(seq) = s.join_seq {
            self.address(
                tangle_wire::JOIN_CLIENT,
                s.client.ip(),
                Some(s.client.port()),
            );
            self.int(tangle_wire::JOIN_SEQ, i64::from(seq));
        }
        self.bool(tangle_wire::SYNC, s.sync);
        self.addr(attr::SERVER_ADDRESS, attr::SERVER_PORT, s.server);
        self.addr(attr::CLIENT_ADDRESS, attr::CLIENT_PORT, s.client);
        self.str(attr::NETWORK_TRANSPORT, "tcp");
        self.int(attr::PROCESS_PID, i64::from(s.pid));
        if let Some(peer) = &s.peer_service {
            self.str(attr::PEER_SERVICE, peer);
        }
        self.fields(s);
        if let Some(o) = s.outcome {
            self.str(tangle_wire::OUTCOME, o.as_str());
        }
        if s.link_inferred {
            self.bool(tangle_wire::LINK_INFERRED, true);
        }
        if s.link_lost {
            self.bool(tangle_wire::LINK_LOST, true);
        }
        if s.children > 0 {
            self.int(attr::TANGLE_CHILDREN, i64::from(s.children));
        }
        // Status: an error with the protocol's code as its message.
        if let Some(code) = &s.error {
            let len = 1 + varint_len(code.len() as u64) + code.len() + 2;
            put_tag(self.buf, 15, LEN);
            put_varint(self.buf, len as u64);
            put_bytes(self.buf, 2, code.as_bytes());
            put_uint(self.buf, 3, 2); // STATUS_CODE_ERROR
        } else {
            put_bytes(self.buf, 15, &[]);
        }
    }

    fn fields(&mut self, s: &SpanRecord) {
        match &s.fields {
            Fields::Http(h) => {
                self.str(attr::HTTP_REQUEST_METHOD, &h.method);
                self.str(attr::URL_PATH, &h.path);
                let route = s.operation.split_once(' ').map_or("", |(_, r)| r);
                self.str(attr::HTTP_ROUTE, route);
                if let Some(status) = h.status {
                    self.int(attr::HTTP_RESPONSE_STATUS_CODE, i64::from(status));
                }
                if let Some(g) = &h.grpc {
                    self.str(attr::RPC_SYSTEM, "grpc");
                    self.str(attr::RPC_SERVICE, &g.service);
                    self.str(attr::RPC_METHOD, &g.method);
                }
            }
            Fields::Sql(q) => {
                self.str(attr::DB_SYSTEM_NAME, &q.system);
                if let Some(db) = &q.database {
                    self.str(attr::DB_NAMESPACE, db);
                }
                // Literals are already masked.
                if let Some(text) = &q.statement {
                    self.str(attr::DB_QUERY_TEXT, text);
                }
            }
            // Pub/sub: a message to or from a channel, not a data access.
            Fields::Redis(r) if r.channel.is_some() => {
                self.str(attr::MESSAGING_SYSTEM, "redis");
                if let Some(ch) = &r.channel {
                    self.str(attr::MESSAGING_DESTINATION_NAME, ch);
                }
                let operation = if r.push { "receive" } else { "send" };
                self.str(attr::MESSAGING_OPERATION_TYPE, operation);
            }
            Fields::Redis(r) => {
                self.str(attr::DB_SYSTEM_NAME, "redis");
                self.str(attr::DB_OPERATION_NAME, &r.command);
            }
        }
    }
}

/// The spans of one process in a batch.
struct Group {
    identity: Arc<Identity>,
    /// Each span encoded as a `ScopeSpans.spans` field, one after another.
    bytes: Vec<u8>,
    /// Where each span's bytes end.
    ends: Vec<usize>,
}

/// Spans encoded for one request, grouped by process.
#[derive(Default)]
pub struct Batch {
    groups: Vec<Group>,
    /// Spans in the batch.
    pub spans: u64,
    /// Bytes of encoded spans.
    pub bytes: usize,
}

/// Reusable buffers for encoding spans.
#[derive(Default)]
pub struct Encoder {
    span: Vec<u8>,
    text: String,
}

impl Batch {
    /// Encodes `o`, of the process `identity` names, into the batch.
    pub fn push(&mut self, o: Outgoing, identity: &Arc<Identity>, enc: &mut Encoder) {
        enc.span.clear();
        SpanWriter {
            buf: &mut enc.span,
            text: &mut enc.text,
        }
        .span(&o.span);
        // Few processes to a batch, the latest most likely.
        let at = match self
            .groups
            .iter()
            .rposition(|g| Arc::ptr_eq(&g.identity, identity))
        {
            Some(at) => at,
            None => {
                self.groups.push(Group {
                    identity: identity.clone(),
                    bytes: Vec::new(),
                    ends: Vec::new(),
                });
                self.groups.len() - 1
            }
        };
        let Some(group) = self.groups.get_mut(at) else {
            return;
        };
        let before = group.bytes.len();
        put_bytes(&mut group.bytes, 2, &enc.span);
        group.ends.push(group.bytes.len());
        self.spans += 1;
        self.bytes += group.bytes.len() - before;
    }

    /// The `ExportTraceServiceRequest`: a resource per process.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes + 256 * self.groups.len());
        let mut resource = Vec::new();
        for g in &self.groups {
            resource.clear();
            for (k, v) in g.identity.resource_attributes() {
                put_attr(&mut resource, 1, k, Value::Str(&v));
            }
            // ResourceSpans { resource, scope_spans: [ScopeSpans { spans }] },
            // lengths worked out so the spans are copied once.
            let field = |len: usize| 1 + varint_len(len as u64) + len;
            put_tag(&mut out, 1, LEN);
            put_varint(
                &mut out,
                (field(resource.len()) + field(g.bytes.len())) as u64,
            );
            put_bytes(&mut out, 1, &resource);
            put_bytes(&mut out, 2, &g.bytes);
        }
        out
    }

    /// The batch in two with about half its spans each; each span keeps
    /// its process.
    pub fn halves(self) -> [Batch; 2] {
        let [mut first, mut second] = [Batch::default(), Batch::default()];
        let half = self.spans / 2;
        let mut seen = 0u64;
        for g in self.groups {
            let mut start = 0;
            for &end in &g.ends {
                let b = if seen < half { &mut first } else { &mut second };
                if b.groups
                    .last()
                    .is_none_or(|last| !Arc::ptr_eq(&last.identity, &g.identity))
                {
                    b.groups.push(Group {
                        identity: g.identity.clone(),
                        bytes: Vec::new(),
                        ends: Vec::new(),
                    });
                }
                if let Some(last) = b.groups.last_mut() {
                    last.bytes
                        .extend_from_slice(g.bytes.get(start..end).unwrap_or_default());
                    last.ends.push(last.bytes.len());
                }
                b.spans += 1;
                b.bytes += end - start;
                start = end;
                seen += 1;
            }
        }
        [first, second]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Addresses written digit by digit read as `Display` writes them.
    #[test]
    fn addresses_as_display_writes_them() {
        let (mut buf, mut text) = (Vec::new(), String::new());
        for a in [
            "0.0.0.0:0",
            "127.0.0.1:8080",
            "10.244.1.7:40000",
            "255.255.255.255:65535",
            "[::1]:443",
            "[2001:db8::8a2e:370:7334]:5432",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let mut w = SpanWriter {
                buf: &mut buf,
                text: &mut text,
            };
            w.address("k", a.ip(), Some(a.port()));
            assert_eq!(w.text.as_str(), a.to_string());
            w.address("k", a.ip(), None);
            assert_eq!(w.text.as_str(), a.ip().to_string());
        }
    }
    use crate::{
        connections::Connection,
        spans::{SpanRecord, tests::ex},
    };
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{AnyValue, any_value::Value as Any},
        trace::v1::Span,
    };
    use prost::Message as _;
    use tangle_common::Role;
    use tangle_protocols::{Fields, HttpFields, SqlFields, Status};

    fn attrs(s: &Span) -> std::collections::BTreeMap<String, String> {
        s.attributes
            .iter()
            .map(|kv| {
                let v = match &kv.value {
                    Some(AnyValue {
                        value: Some(Any::StringValue(s)),
                    }) => s.clone(),
                    Some(AnyValue {
                        value: Some(Any::IntValue(i)),
                    }) => i.to_string(),
                    Some(AnyValue {
                        value: Some(Any::BoolValue(b)),
                    }) => b.to_string(),
                    other => format!("{other:?}"),
                };
                (kv.key.clone(), v)
            })
            .collect()
    }

    fn decode(b: &Batch) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(b.encode().as_slice()).expect("valid OTLP")
    }

    /// What prost decodes is what the record says, attribute by attribute.
    #[test]
    fn spans_decode_as_otlp_with_every_attribute() {
        let conn = Connection::sample(1, Role::Client, "10.0.0.1:40000", "10.0.0.2:5432");
        let mut e = ex(1_000, 3_000);
        e.operation = "SELECT orders".into();
        e.status = Status::Error {
            code: "42P01".into(),
        };
        e.fields = Fields::Sql(SqlFields {
            system: "postgresql".into(),
            database: Some("shop".into()),
            statement: Some("SELECT * FROM orders WHERE id = ? -- é".into()),
            ..SqlFields::default()
        });
        let mut rec = SpanRecord::new(&conn, e, 10);
        rec.parent_span_id = Some([7; 8]);
        rec.link_inferred = true;
        let (trace, span) = (rec.trace_id, rec.span_id);
        let mut b = Batch::default();
        let mut enc = Encoder::default();
        b.push(
            Outgoing {
                identity: conn.identity.clone(),
                span: rec,
            },
            conn.identity.get(),
            &mut enc,
        );
        let req = decode(&b);
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        let resource = rs.resource.as_ref().expect("resource");
        assert!(
            resource
                .attributes
                .iter()
                .any(|kv| kv.key == "service.name")
        );
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(
            (s.trace_id.as_slice(), s.span_id.as_slice()),
            (&trace[..], &span[..])
        );
        assert_eq!(s.parent_span_id, vec![7; 8]);
        assert_eq!(s.name, "SELECT orders");
        assert_eq!(s.kind, 3);
        assert_eq!(
            (s.start_time_unix_nano, s.end_time_unix_nano),
            (1_010, 3_010)
        );
        let status = s.status.as_ref().expect("status");
        assert_eq!((status.code, status.message.as_str()), (2, "42P01"));
        let a = attrs(s);
        let want = [
            ("tangle.join.client", "10.0.0.1:40000"),
            ("tangle.join.seq", "1000"),
            ("tangle.sync", "true"),
            ("server.address", "10.0.0.2"),
            ("server.port", "5432"),
            ("client.address", "10.0.0.1"),
            ("client.port", "40000"),
            ("network.transport", "tcp"),
            ("process.pid", "7"),
            ("db.system.name", "postgresql"),
            ("db.namespace", "shop"),
            ("db.query.text", "SELECT * FROM orders WHERE id = ? -- é"),
            ("tangle.outcome", "error"),
            ("tangle.link.inferred", "true"),
        ];
        for (k, v) in want {
            assert_eq!(a.get(k).map(String::as_str), Some(v), "{k} in {a:#?}");
        }
        assert_eq!(a.len(), want.len(), "nothing else: {a:#?}");
        assert!(!a.contains_key("tangle.link.lost"));
    }

    #[test]
    fn an_http_server_span_without_error_has_an_unset_status() {
        let conn = Connection::sample(1, Role::Server, "127.0.0.1:80", "127.0.0.1:40000");
        let mut e = ex(5, 9);
        e.operation = "GET /users/{id}".into();
        e.fields = Fields::Http(HttpFields {
            method: "GET".into(),
            path: "/users/7".into(),
            status: Some(503),
            ..HttpFields::default()
        });
        let mut rec = SpanRecord::new(&conn, e, 0);
        rec.children = 2;
        let mut b = Batch::default();
        b.push(
            Outgoing {
                identity: conn.identity.clone(),
                span: rec,
            },
            conn.identity.get(),
            &mut Encoder::default(),
        );
        let req = decode(&b);
        let s = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(s.kind, 2);
        assert!(s.parent_span_id.is_empty());
        assert_eq!(s.status.as_ref().map(|st| st.code), Some(0));
        let a = attrs(s);
        assert_eq!(a["http.route"], "/users/{id}");
        assert_eq!(a["url.path"], "/users/7");
        assert_eq!(a["http.response.status_code"], "503");
        assert_eq!(a["tangle.outcome"], "fault");
        assert_eq!(a["tangle.children"], "2");
        assert_eq!(a["client.address"], "127.0.0.1");
    }

    #[test]
    fn a_batch_splits_into_halves_that_keep_their_processes() {
        let a = Connection::sample(1, Role::Client, "127.0.0.1:1", "127.0.0.1:80");
        let mut b_conn = a.clone();
        b_conn.identity = crate::identity::IdentityCell::known(Identity::executable("other"));
        let mut batch = Batch::default();
        let mut enc = Encoder::default();
        let mut ids = Vec::new();
        for (i, c) in [&a, &a, &a, &b_conn, &b_conn, &b_conn]
            .into_iter()
            .enumerate()
        {
            let rec = SpanRecord::new(c, ex(i as u64, 10), 0);
            ids.push(rec.span_id);
            batch.push(
                Outgoing {
                    identity: c.identity.clone(),
                    span: rec,
                },
                c.identity.get(),
                &mut enc,
            );
        }
        let total = batch.bytes;
        let names = |req: &ExportTraceServiceRequest| -> Vec<(String, Vec<u8>)> {
            req.resource_spans
                .iter()
                .flat_map(|rs| {
                    let name = rs.resource.as_ref().map_or(String::new(), |r| {
                        attrs(&Span {
                            attributes: r.attributes.clone(),
                            ..Span::default()
                        })["process.executable.name"]
                            .clone()
                    });
                    rs.scope_spans
                        .iter()
                        .flat_map(|ss| &ss.spans)
                        .map(move |s| (name.clone(), s.span_id.clone()))
                })
                .collect()
        };
        let whole = names(&decode(&batch));
        assert_eq!(whole.len(), 6);
        let [first, second] = batch.halves();
        assert_eq!(first.bytes + second.bytes, total);
        let (f, s) = (names(&decode(&first)), names(&decode(&second)));
        assert_eq!(f, whole[..3], "the first half: the first process's spans");
        assert_eq!(s, whole[3..]);
        assert_eq!(f[0].1, ids[0].to_vec());
        let [one, two] = first.halves();
        assert_eq!((one.spans, two.spans), (1, 2));
    }

    #[test]
    fn varints() {
        for v in [0u64, 1, 127, 128, 300, 16_383, 16_384, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            assert_eq!(
                prost::encoding::decode_varint(&mut b.as_slice()).unwrap(),
                v
            );
        }
    }
}
