//! Call trees described in tests, turned into the spans instrumented
//! services (or agents) send.
#![allow(dead_code)]

pub mod process;

use tangle_collector::span::{Peer, Span, SpanKind};

/// A service handling one operation, and the calls it makes.
#[derive(Clone, Debug)]
pub struct Node {
    pub service: String,
    pub operation: String,
    pub error: bool,
    pub calls: Vec<Call>,
}

#[derive(Clone, Debug)]
pub enum Call {
    Sync(Node),
    Publish(Node),
    Db {
        namespace: String,
        tables: Vec<String>,
        writes: bool,
    },
    Uninstrumented(String),
}

pub fn node(service: &str, calls: Vec<Call>) -> Node {
    Node {
        service: service.into(),
        operation: format!("GET /{service}"),
        error: false,
        calls,
    }
}

pub struct Builder {
    pub trace: [u8; 16],
    next: u64,
    pub spans: Vec<Span>,
    pub skew: std::collections::HashMap<String, i64>,
}

impl Builder {
    pub fn new(trace: u8) -> Self {
        // Span ids unique across traces, as real (random) ones are.
        Self {
            trace: [trace; 16],
            next: u64::from(trace) << 32,
            spans: Vec::new(),
            skew: Default::default(),
        }
    }

    fn id(&mut self) -> [u8; 8] {
        self.next += 1;
        self.next.to_be_bytes()
    }

    fn span(
        &mut self,
        parent: Option<[u8; 8]>,
        service: &str,
        kind: SpanKind,
        op: &str,
        peer: Peer,
        t: u64,
    ) -> [u8; 8] {
        let id = self.id();
        let skew = self.skew.get(service).copied().unwrap_or(0);
        let at = (t as i64 + skew).max(0) as u64;
        self.spans.push(Span {
            trace_id: self.trace,
            span_id: id,
            parent,
            service: service.into(),
            kind,
            operation: op.into(),
            start_ns: at,
            end_ns: at + 1000,
            fault: false,
            data_node: false,
            housekeeping: false,
            link_inferred: false,
            link_lost: false,
            peer,
            tables: Vec::new(),
            writes: false,
            protocol: None,
            join: None,
        });
        id
    }

    /// The server span of `n` and everything below it.
    pub fn serve(&mut self, parent: Option<[u8; 8]>, kind: SpanKind, n: &Node, t: u64) -> [u8; 8] {
        let me = self.span(parent, &n.service, kind, &n.operation, Peer::Unknown, t);
        self.spans.last_mut().unwrap().fault = n.error;
        // Work inside the service goes through an internal span.
        let work = self.span(
            Some(me),
            &n.service,
            SpanKind::Internal,
            "handler",
            Peer::Unknown,
            t + 1,
        );
        for (i, call) in n.calls.iter().enumerate() {
            let t = t + 10 * (i as u64 + 1);
            match call {
                Call::Sync(callee) => {
                    let peer = Peer::Service {
                        name: callee.service.clone(),
                    };
                    let c = self.span(
                        Some(work),
                        &n.service,
                        SpanKind::Client,
                        &callee.operation,
                        peer,
                        t,
                    );
                    self.spans.last_mut().unwrap().fault = callee.error;
                    self.serve(Some(c), SpanKind::Server, callee, t + 1);
                }
                Call::Publish(callee) => {
                    let peer = Peer::Service {
                        name: "broker".into(),
                    };
                    let c = self.span(
                        Some(work),
                        &n.service,
                        SpanKind::Producer,
                        "publish",
                        peer,
                        t,
                    );
                    self.serve(Some(c), SpanKind::Consumer, callee, t + 1);
                }
                Call::Db {
                    namespace,
                    tables,
                    writes,
                } => {
                    let peer = Peer::Database {
                        system: "postgresql".into(),
                        server: "db:5432".into(),
                        namespace: Some(namespace.clone()),
                    };
                    self.span(Some(work), &n.service, SpanKind::Client, "SELECT", peer, t);
                    let s = self.spans.last_mut().unwrap();
                    s.tables = tables.clone();
                    s.writes = *writes;
                }
                Call::Uninstrumented(name) => {
                    let peer = Peer::Service { name: name.clone() };
                    self.span(Some(work), &n.service, SpanKind::Client, "GET /x", peer, t);
                }
            }
        }
        me
    }

    pub fn build(root: &Node) -> Vec<Span> {
        let mut b = Builder::new(7);
        b.serve(None, SpanKind::Server, root, 1_000_000);
        b.spans
    }
}

pub fn linear(n: usize) -> Node {
    let mut cur = node(&format!("s{n}"), vec![]);
    for i in (1..n).rev() {
        cur = node(&format!("s{i}"), vec![Call::Sync(cur)]);
    }
    cur
}
