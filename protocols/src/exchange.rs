//! Exchanges: the records parsers produce, separate from the parsers.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Http1,
    Http2,
    Redis,
    Postgres,
    Mysql,
}

/// How the call ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Status {
    Ok {
        code: Option<String>,
    },
    Error {
        code: String,
    },
    /// No response was seen (fire-and-forget, or the connection ended first).
    NoResponse,
}

impl Status {
    /// A reply: an error with its code, or ok.
    pub fn from_error(error: Option<String>) -> Self {
        match error {
            Some(code) => Self::Error { code },
            None => Self::Ok { code: None },
        }
    }
}

/// Trace context carried by the request, for linking spans.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TraceContext {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b3: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl TraceContext {
    /// Takes a B3 header (`b3`, `x-b3-traceid` or `x-b3-spanid`, lower case):
    /// `b3` holds the single-header form, `TRACEID-SPANID[-...]`; the
    /// multi-header form is folded into it. Returns false for other names.
    pub fn add_b3_header(&mut self, name: &str, value: &str) -> bool {
        if !matches!(name, "b3" | "x-b3-traceid" | "x-b3-spanid") {
            return false;
        }
        let value = &crate::kept(value, crate::MAX_HEADER_VALUE);
        let b3 = self.b3.take();
        self.b3 = Some(match (name, b3) {
            ("b3", _) => value.to_owned(),
            // A single header, or the same header twice: first one wins.
            ("x-b3-traceid", Some(s)) if !s.starts_with('-') => s,
            ("x-b3-traceid", rest) => format!("{value}{}", rest.unwrap_or_default()),
            ("x-b3-spanid", Some(t)) if !t.contains('-') => format!("{t}-{value}"),
            ("x-b3-spanid", None) => format!("-{value}"),
            ("x-b3-spanid", Some(s)) => s,
            (_, b3) => {
                self.b3 = b3;
                return false;
            }
        });
        true
    }

    pub fn is_empty(&self) -> bool {
        self.traceparent.is_none() && self.b3.is_none() && self.request_id.is_none()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HttpFields {
    pub method: String,
    /// The route: the path alone, data-looking segments templated
    /// ([`crate::normalize::route`]); nothing else of the URL is kept.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_content_length: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_content_length: Option<u64>,
    #[serde(skip_serializing_if = "TraceContext::is_empty")]
    pub trace: TraceContext,
    /// gRPC calls (HTTP/2 with `content-type: application/grpc`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcFields>,
}

impl crate::held::HeapSize for HttpFields {
    fn heap_size(&self) -> usize {
        let grpc = self.grpc.as_ref().map_or(0, |g| {
            std::mem::size_of::<GrpcFields>()
                + g.service.capacity()
                + g.method.capacity()
                + g.status.heap_size()
        });
        self.method.capacity()
            + self.path.capacity()
            + self.host.heap_size()
            + self.trace.traceparent.heap_size()
            + self.trace.b3.heap_size()
            + self.trace.request_id.heap_size()
            + grpc
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GrpcFields {
    /// `package.Service`.
    pub service: String,
    pub method: String,
    /// `grpc-status` from the trailers (`0` is OK).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RedisFields {
    /// Upper-case command name, with the subcommand for container commands
    /// (`CLIENT SETNAME`); arguments are never kept.
    pub command: String,
    pub args: u32,
    /// `true` for a server push (pub/sub message) that answers no request.
    pub push: bool,
    /// The channel a `PUBLISH` sends to or a pushed message came from (the
    /// pattern, for a pattern subscription); at most 64 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// A database call: the connection's identity and the statement, literals masked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SqlFields {
    /// `db.system.name`: `postgresql`, `mysql`.
    pub system: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// The statement with literals replaced by `?`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<crate::sql::StatementKind>,
    /// Tables touched, qualified with the database.
    pub tables: Vec<String>,
    /// The server's command tag (`INSERT 0 1`, `SELECT 5`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_tag: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "protocol")]
pub enum Fields {
    Http(HttpFields),
    Redis(RedisFields),
    Sql(SqlFields),
}

/// One request and its response on one connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Exchange {
    pub protocol: Protocol,
    /// The normalised name of what was asked: `GET /orders/{id}`, `redis GET`.
    pub operation: String,
    pub status: Status,
    /// Request/response (true) or publish (false, ends a chain).
    pub sync: bool,
    /// Time of the transfer that carried the request's first byte.
    pub start_ns: u64,
    /// The TCP sequence number of the request's first byte, when known:
    /// the same at both ends of the connection, so it joins them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_seq: Option<u32>,
    /// Time of the transfer that carried the response's last byte (or the request's, with no response).
    pub end_ns: u64,
    pub request_size: u64,
    pub response_size: u64,
    /// Some of the fields come from a capture that was cut short.
    pub truncated: bool,
    pub fields: Fields,
}
