//! The collector's configuration file (TOML). Every field has a default, so
//! the collector runs with no file at all. Unknown fields are errors.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    intake::IntakeLimits,
    model::{ModelLimits, Thresholds},
    names::NameLimits,
};

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, or one it names, could not be read.
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a field is unknown or of the wrong type
    /// (the message names it).
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    /// The token file is empty: every export would be refused.
    #[error("the token file {0} is empty: give a token, or none")]
    EmptyToken(String),
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where OTLP over gRPC is received.
    pub otlp_grpc: SocketAddr,
    /// Where OTLP over HTTP (`POST /v1/traces`, protobuf or JSON) is received.
    pub otlp_http: SocketAddr,
    /// Where `/metrics` and the JSON API (`/api/...`) are served.
    pub http: SocketAddr,
    /// The folder of the baseline of known chains.
    pub data_dir: PathBuf,
    /// How long a trace waits for more spans after its last one, in
    /// milliseconds. Longer than the agent's hold of outbound calls for
    /// their request (5 s), or a call held that long misses its callee.
    pub trace_window_ms: u64,
    /// Spans held while their traces are assembled, at most; past it the
    /// oldest traces are closed early (`tangle_traces_evicted_total`).
    pub max_spans_in_flight: usize,
    /// When measurements become findings.
    pub thresholds: Thresholds,
    /// What the OTLP receivers take, and how long they wait.
    pub intake: IntakeLimits,
    /// How much the collector keeps, whatever the traffic.
    pub limits: Limits,
    /// Database owners: database (`server/namespace`, or the namespace alone) to service.
    pub owners: BTreeMap<String, String>,
    /// Who may send spans: with a token, every export must carry
    /// `authorization: Bearer TOKEN` (gRPC metadata or HTTP header); others
    /// are refused and counted.
    pub auth: AuthConfig,
    /// Who may read the map (`/`) and the JSON API (`/api/...`): with a
    /// token, each request must carry it, as `authorization: Bearer TOKEN`
    /// or as the password of HTTP Basic authentication (what a browser
    /// asks for; any user name). `/metrics` and `/healthz` stay open.
    pub api: AuthConfig,
    /// TLS on the OTLP receivers (gRPC and HTTP).
    pub tls: Option<TlsConfig>,
}

/// A token, given inline or in a file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The token.
    pub token: Option<String>,
    /// A file holding the token; surrounding white space is ignored. Read
    /// once, at start: a new token needs a restart.
    pub token_file: Option<PathBuf>,
}

impl AuthConfig {
    /// The token, read from its file if need be.
    pub fn read(&self) -> Result<Option<String>, ConfigError> {
        match (&self.token, &self.token_file) {
            (Some(t), _) => Ok(Some(t.trim().to_owned())),
            (None, Some(path)) => {
                let token = read(path)?.trim().to_owned();
                if token.is_empty() {
                    return Err(ConfigError::EmptyToken(path.display().to_string()));
                }
                Ok(Some(token))
            }
            (None, None) => Ok(None),
        }
    }
}

/// TLS for the OTLP receivers, PEM files.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The collector's certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// Require client certificates signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Bounds on what one trace, and the model, may hold: past each, the
/// excess is folded into `{other}` (or dropped) and counted, so that
/// made-up names and huge traces cost bounded memory and time. What is
/// kept is kept until the collector restarts; the first time a limit is
/// reached the log says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Spans one trace may hold; more are dropped
    /// (`tangle_spans_over_trace_limit_total`).
    pub max_spans_per_trace: usize,
    /// Service hops a chain is followed to; deeper paths are cut there
    /// (`tangle_model_overflow_total{kind="chain_depth"}`).
    pub max_chain_depth: usize,
    /// Distinct services (and peers known by name or address); more are
    /// shown as `{other}` (`tangle_names_folded_total{kind="service"}`).
    pub max_services: usize,
    /// Distinct operations of one service; more are shown as `{other}`
    /// (`tangle_names_folded_total{kind="operation"}`).
    pub max_operations_per_service: usize,
    /// Bytes of one name (service, operation, table), at least 16; the rest
    /// is cut (`tangle_names_cut_total`).
    pub max_name_bytes: usize,
    /// Distinct synchronous chains; more count as the `{other}` chain,
    /// never as new ones (`tangle_model_overflow_total{kind="chains"}`).
    /// The baseline file keeps at most four times as many.
    pub max_chains: usize,
    /// Distinct entry operations; more count as `{other}`
    /// (`tangle_model_overflow_total{kind="entries"}`).
    pub max_entries: usize,
    /// Distinct edges of each kind (sync, async, database); more count as
    /// `{other}` to `{other}` (`kind="edges"`).
    pub max_edges: usize,
    /// Distinct databases; more count as `{other}` (`kind="databases"`).
    pub max_databases: usize,
    /// Distinct (database, service, table) entries, all databases
    /// together; more count as table `{other}` (`kind="tables"`).
    pub max_tables: usize,
    /// Distinct cycles kept; more are counted only (`kind="cycles"`); 0
    /// keeps none.
    pub max_cycles: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let (n, m) = (NameLimits::default(), ModelLimits::default());
        Self {
            max_spans_per_trace: crate::assembly::DEFAULT_MAX_TRACE_SPANS,
            max_chain_depth: crate::chains::DEFAULT_MAX_DEPTH,
            max_services: n.max_services,
            max_operations_per_service: n.max_operations_per_service,
            max_name_bytes: crate::names::DEFAULT_MAX_NAME_BYTES,
            max_chains: m.max_chains,
            max_entries: m.max_entries,
            max_edges: m.max_edges,
            max_databases: m.max_databases,
            max_tables: m.max_tables,
            max_cycles: m.max_cycles,
        }
    }
}

impl Limits {
    pub fn names(&self) -> NameLimits {
        NameLimits {
            max_services: self.max_services.max(1),
            max_operations_per_service: self.max_operations_per_service.max(1),
        }
    }

    pub fn model(&self) -> ModelLimits {
        ModelLimits {
            max_chains: self.max_chains.max(1),
            max_entries: self.max_entries.max(1),
            max_edges: self.max_edges.max(1),
            max_databases: self.max_databases.max(1),
            max_tables: self.max_tables.max(1),
            max_cycles: self.max_cycles,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            otlp_grpc: ([0, 0, 0, 0], 4317).into(),
            otlp_http: ([0, 0, 0, 0], 4318).into(),
            http: ([0, 0, 0, 0], 9464).into(),
            data_dir: PathBuf::from("tangle-data"),
            trace_window_ms: 8_000,
            max_spans_in_flight: 1_000_000,
            thresholds: Thresholds::default(),
            intake: IntakeLimits::default(),
            limits: Limits::default(),
            owners: BTreeMap::new(),
            auth: AuthConfig::default(),
            api: AuthConfig::default(),
            tls: None,
        }
    }
}

impl Config {
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let bad = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        for (section, a) in [("auth", &config.auth), ("api", &config.api)] {
            if a.token.is_some() && a.token_file.is_some() {
                return Err(bad(format!(
                    "{section}.token and {section}.token_file: give one, not both"
                )));
            }
            if a.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
                return Err(bad(format!(
                    "{section}.token is empty: give a token, or none"
                )));
            }
        }
        let (i, l) = (&config.intake, &config.limits);
        let at_least = [
            ("trace_window_ms", config.trace_window_ms, 1),
            ("max_spans_in_flight", config.max_spans_in_flight as u64, 1),
            ("intake.max_connections", i.max_connections as u64, 1),
            ("intake.max_request_bytes", i.max_request_bytes as u64, 1),
            (
                "intake.max_request_memory_mib",
                i.max_request_memory_mib as u64,
                1,
            ),
            (
                "intake.max_requests_in_progress",
                i.max_requests_in_progress as u64,
                1,
            ),
            ("intake.max_queued_spans", i.max_queued_spans as u64, 1),
            ("intake.header_timeout_ms", i.header_timeout_ms, 1),
            ("intake.request_timeout_ms", i.request_timeout_ms, 1),
            ("intake.idle_timeout_ms", i.idle_timeout_ms, 1),
            ("intake.max_streams", u64::from(i.max_streams), 1),
            (
                "intake.max_header_bytes",
                u64::from(i.max_header_bytes),
                1024,
            ),
            (
                "limits.max_spans_per_trace",
                l.max_spans_per_trace as u64,
                1,
            ),
            ("limits.max_chain_depth", l.max_chain_depth as u64, 1),
            ("limits.max_services", l.max_services as u64, 1),
            (
                "limits.max_operations_per_service",
                l.max_operations_per_service as u64,
                1,
            ),
            ("limits.max_name_bytes", l.max_name_bytes as u64, 16),
            ("limits.max_chains", l.max_chains as u64, 1),
            ("limits.max_entries", l.max_entries as u64, 1),
            ("limits.max_edges", l.max_edges as u64, 1),
            ("limits.max_databases", l.max_databases as u64, 1),
            ("limits.max_tables", l.max_tables as u64, 1),
        ];
        if let Some((name, value, min)) = at_least.into_iter().find(|(_, v, min)| v < min) {
            return Err(bad(format!("{name} = {value}: it must be at least {min}")));
        }
        Ok(config)
    }

    /// The token exports must carry, read from its file if need be.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        self.auth.read()
    }

    /// The token the map and the API ask for, read from its file if need be.
    pub fn api_token(&self) -> Result<Option<String>, ConfigError> {
        self.api.read()
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read(path)?, &path.display().to_string())
    }

    /// The configuration as `check-config` prints it: an inline token is
    /// not shown.
    pub fn shown(&self) -> String {
        let mut shown = self.clone();
        for a in [&mut shown.auth, &mut shown.api] {
            if a.token.is_some() {
                a.token = Some("(set)".into());
            }
        }
        format!("{shown:#?}")
    }
}

/// Reads a file the configuration is or names.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_that_name_the_field() {
        assert_eq!(Config::parse("", "c.toml").unwrap(), Config::default());
        let c = Config::parse("data_dir = \"/var/lib/tangle\"\n[thresholds]\nmax_sync_depth = 5\n[owners]\norders_db = \"orders\"\n[intake]\nmax_connections = 10\n[limits]\nmax_chains = 7\n", "c.toml").unwrap();
        assert_eq!((c.intake.max_connections, c.limits.max_chains), (10, 7));
        assert_eq!(c.thresholds.max_sync_depth, 5);
        assert_eq!(c.owners["orders_db"], "orders");
        let e = Config::parse("trace_windw_ms = 3\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("trace_windw_ms"), "{e}");
        let e = Config::parse("[thresholds]\nmax_sync_depth = \"deep\"\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_sync_depth"), "{e}");
        let e = Config::parse("http = \"not an address\"\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http"), "{e}");
        let e = Config::parse("[limits]\nmax_chainz = 1\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_chainz"), "{e}");
        let c = Config::parse("[auth]\ntoken = \"hunter2\"\n", "c.toml").unwrap();
        assert!(!c.shown().contains("hunter2"));
        for (text, named) in [
            (
                "[intake]\nmax_connections = 0\n",
                "intake.max_connections = 0",
            ),
            (
                "[limits]\nmax_name_bytes = 3\n",
                "limits.max_name_bytes = 3",
            ),
            ("trace_window_ms = 0\n", "trace_window_ms = 0"),
            ("[auth]\ntoken = \" \"\n", "auth.token is empty"),
        ] {
            let e = Config::parse(text, "c.toml").unwrap_err().to_string();
            assert!(e.contains(named), "{text}: {e}");
        }
        Config::parse(
            "[limits]\nmax_cycles = 0\n[intake]\nmax_connections_per_address = 0\n",
            "c.toml",
        )
        .unwrap();
    }

    /// The documentation's example shows the defaults: they must be the code's.
    #[test]
    fn the_documented_example_parses_and_shows_the_defaults() {
        let collector = include_str!("../../docs/collector.md");
        let start = collector.find("```toml\n").unwrap() + "```toml\n".len();
        let example = &collector[start..start + collector[start..].find("```").unwrap()];
        let c = Config::parse(example, "docs/collector.md").unwrap();
        let d = Config::default();
        assert_eq!(c.intake, d.intake);
        assert_eq!(c.limits, d.limits);
        assert_eq!(c.thresholds, d.thresholds);
        assert_eq!(
            (c.trace_window_ms, c.max_spans_in_flight),
            (d.trace_window_ms, d.max_spans_in_flight)
        );
    }
}
