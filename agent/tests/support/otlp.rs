//! A real OTLP/gRPC receiver for tests of `tangle-agent run`, and the agent
//! started against it.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Child,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{KeyValue, any_value::Value},
    trace::v1::Span,
};

/// What a receiver got: (service.name, span), and each service's resource.
#[derive(Clone, Default)]
pub struct Receiver {
    pub spans: Arc<Mutex<Vec<(String, Span)>>>,
    pub resources: Arc<Mutex<BTreeMap<String, BTreeMap<String, String>>>>,
    /// Exports refused for a missing or wrong token.
    pub refused: Arc<Mutex<u64>>,
    /// `Bearer TOKEN` the exports must carry, if set.
    token: Option<String>,
}

fn value(kv: &KeyValue) -> Option<String> {
    match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A span attribute as text.
pub fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes.iter().find(|kv| kv.key == key).and_then(value)
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if let Some(t) = &self.token {
            let given = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if given != Some(&format!("Bearer {t}")) {
                *self.refused.lock().unwrap() += 1;
                return Err(tonic::Status::unauthenticated("wrong token"));
            }
        }
        let mut got = self.spans.lock().unwrap();
        for rs in &request.get_ref().resource_spans {
            let resource: BTreeMap<String, String> = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .filter_map(|kv| Some((kv.key.clone(), value(kv)?)))
                .collect();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            self.resources
                .lock()
                .unwrap()
                .insert(service.clone(), resource);
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    got.push((service.clone(), s.clone()));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// TLS for a receiver: its certificate and key, and the CA its clients'
/// certificates must be signed by (PEM).
pub struct ServerTls {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Vec<u8>,
}

/// Starts a receiver on `port` in a thread of its own.
pub fn receiver(port: u16) -> Receiver {
    receiver_with(port, None, None)
}

/// A receiver that wants `token`, over (mutual) TLS if `tls` is given.
pub fn receiver_with(port: u16, token: Option<&str>, tls: Option<ServerTls>) -> Receiver {
    let r = Receiver {
        token: token.map(str::to_owned),
        ..Receiver::default()
    };
    let served = r.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            let mut server = tonic::transport::Server::builder();
            if let Some(tls) = tls {
                use tonic::transport::{Certificate, Identity, ServerTlsConfig};
                server = server
                    .tls_config(
                        ServerTlsConfig::new()
                            .identity(Identity::from_pem(tls.cert, tls.key))
                            .client_ca_root(Certificate::from_pem(tls.client_ca)),
                    )
                    .unwrap();
            }
            server
                .add_service(TraceServiceServer::new(served))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
    });
    r
}

impl Receiver {
    pub fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.spans.lock().unwrap().len()
    }
}

/// Starts `tangle-agent run --json` exporting to `otlp_port`, with `args`;
/// returns once its programs are attached, with its ready file.
pub fn run_agent(otlp_port: u16, args: &[&str]) -> (Child, PathBuf) {
    run_agent_to(&format!("http://127.0.0.1:{otlp_port}"), args)
}

/// Starts `tangle-agent run --json` exporting to `endpoint`, with `args`.
pub fn run_agent_to(endpoint: &str, args: &[&str]) -> (Child, PathBuf) {
    let mut all = vec!["run", "--json", "--collector", endpoint];
    all.extend_from_slice(args);
    super::start_agent(&all)
}

/// The last stats line of a finished agent's output.
pub fn final_stats(out: &std::process::Output) -> serde_json::Value {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(|v| v["type"] == "stats")
        })
        .unwrap_or_else(|| panic!("no stats line in the agent's output"))
}
