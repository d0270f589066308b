//! `tangle-agent run`'s configuration file (TOML). Every field has a
//! default, so the agent runs with no file at all: it then exports to a
//! collector on the same machine. Unknown fields are errors.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a field is unknown or of the wrong
    /// type (the message names it and its line).
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    /// The values parse but do not make sense together.
    #[error("config {path}: {message}")]
    Invalid { path: String, message: String },
    /// The token, inline or in its file, is empty: every export would be
    /// refused.
    #[error("{0} is empty: give a token, or none")]
    EmptyToken(String),
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where spans are sent.
    pub export: ExportConfig,
    /// The agent's own Prometheus metrics.
    pub metrics: MetricsConfig,
    /// How processes are named.
    pub identity: IdentityConfig,
    /// Limits of the parsing stage.
    pub parsing: ParsingConfig,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// The OTLP/gRPC endpoint: `tangle-collector`, or any OTLP receiver.
    /// `https://` turns TLS on.
    pub endpoint: String,
    /// Spans held while the collector is slow or away; past it new spans are
    /// dropped (and counted).
    pub queue_spans: usize,
    /// A bearer token sent with every export (`authorization: Bearer ...`).
    pub token: Option<String>,
    /// A file holding the token (a Kubernetes secret mounted as a file);
    /// its surrounding white space is ignored. Read again when the
    /// collector refuses the token, so a rotated secret is taken without a
    /// restart.
    pub token_file: Option<PathBuf>,
    /// TLS to the collector (with `https://`).
    pub tls: Option<TlsConfig>,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            endpoint: "http://localhost:4317".into(),
            queue_spans: 10_000,
            token: None,
            token_file: None,
            tls: None,
        }
    }
}

/// Certificates for TLS to the collector, PEM files.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The CA that signed the collector's certificate.
    pub ca: PathBuf,
    /// The agent's certificate, for mutual TLS (with `key`).
    pub cert: Option<PathBuf>,
    /// The agent's private key, for mutual TLS (with `cert`).
    pub key: Option<PathBuf>,
    /// The name the collector's certificate is checked against, if not the
    /// endpoint's host.
    pub server_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `/metrics` is served (e.g. `0.0.0.0:9465`); off when unset.
    pub listen: Option<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Ask the Kubernetes API for pods and services: `auto` (when running in
    /// a cluster, i.e. `KUBERNETES_SERVICE_HOST` is set), `on` or `off`.
    pub kubernetes: Toggle,
    /// The Kubernetes API's address, if not the in-cluster one.
    pub kubernetes_api: Option<String>,
    /// The node this agent runs on (a DaemonSet gives it from `spec.nodeName`
    /// as `TANGLE_NODE_NAME`): only this node's pods are listed and watched.
    /// Unset: every node's.
    pub node_name: Option<String>,
    /// Naming rules, tried in order; the first that matches names the service.
    pub rules: Vec<NamingRule>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            kubernetes: Toggle::Auto,
            kubernetes_api: None,
            node_name: None,
            rules: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Toggle {
    Auto,
    On,
    Off,
}

/// Names the processes it matches `name`. Every condition given must hold;
/// values are globs (`*` matches any run of characters).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NamingRule {
    /// The service name to use.
    pub name: String,
    /// The executable name as found: `argv[0]`'s file name, else the
    /// executable file's, else the process's `comm`.
    pub exe: Option<String>,
    /// The command line, arguments joined by spaces.
    pub cmdline: Option<String>,
    /// The systemd unit (`nginx.service`).
    pub systemd_unit: Option<String>,
    /// The container id.
    pub container_id: Option<String>,
    /// The Kubernetes namespace.
    pub k8s_namespace: Option<String>,
    /// The Kubernetes pod name.
    pub k8s_pod: Option<String>,
    /// The Kubernetes workload (Deployment, StatefulSet, ... name).
    pub k8s_workload: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParsingConfig {
    /// Most memory all connections' parsers may hold together (partial
    /// messages, requests awaiting their response, prepared statements), in
    /// MiB; past it, the connections holding most stop being parsed (counted).
    pub memory_mib: usize,
    /// Most memory one connection's parsers may hold, in MiB; past it that
    /// connection stops being parsed (counted).
    pub connection_mib: usize,
}

impl Default for ParsingConfig {
    fn default() -> Self {
        Self {
            memory_mib: 256,
            connection_mib: 4,
        }
    }
}

impl Config {
    /// Parses and checks a configuration.
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let config = Self::from_toml(text, path)?;
        config.check(path)?;
        Ok(config)
    }

    /// Parses a configuration, to be changed (by flags) before [`Config::check`].
    pub fn from_toml(text: &str, path: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Checks that the values make sense together (`path` names the source).
    pub fn check(&self, path: &str) -> Result<(), ConfigError> {
        let config = self;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let e = &config.export;
        if !(e.endpoint.starts_with("http://") || e.endpoint.starts_with("https://")) {
            return Err(invalid(format!(
                "export.endpoint `{}` must start with http:// or https://",
                e.endpoint
            )));
        }
        if e.token.is_some() && e.token_file.is_some() {
            return Err(invalid(
                "export.token and export.token_file: give one, not both".into(),
            ));
        }
        if let Some(tls) = &e.tls {
            if tls.cert.is_some() != tls.key.is_some() {
                return Err(invalid(
                    "export.tls: cert and key go together (mutual TLS)".into(),
                ));
            }
            if !e.endpoint.starts_with("https://") {
                return Err(invalid(
                    "export.tls is set but export.endpoint is not https://".into(),
                ));
            }
        }
        if e.queue_spans == 0 {
            return Err(invalid("export.queue_spans must be at least 1".into()));
        }
        if config.parsing.memory_mib == 0 {
            return Err(invalid("parsing.memory_mib must be at least 1".into()));
        }
        if config.parsing.connection_mib == 0 {
            return Err(invalid("parsing.connection_mib must be at least 1".into()));
        }
        for (i, r) in config.identity.rules.iter().enumerate() {
            if r.name.trim().is_empty() {
                return Err(invalid(format!("identity.rules[{i}]: name is empty")));
            }
        }
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read("config", path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The export token, read from its file if need be.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        match (&self.export.token, &self.export.token_file) {
            (Some(t), _) if t.trim().is_empty() => {
                Err(ConfigError::EmptyToken("export.token".into()))
            }
            (Some(t), _) => Ok(Some(t.trim().to_owned())),
            (None, Some(path)) => read_token_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// The token in `path`, without the white space around it; an empty one
/// is an error (every export would be refused).
pub fn read_token_file(path: &Path) -> Result<String, ConfigError> {
    let token = read("token file", path)?.trim().to_owned();
    if token.is_empty() {
        return Err(ConfigError::EmptyToken(format!(
            "the token file {}",
            path.display()
        )));
    }
    Ok(token)
}

/// Reads a file the configuration names, with an error that says which.
pub fn read(what: &'static str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_that_name_the_field() {
        let c = Config::parse("", "a.toml").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.export.endpoint, "http://localhost:4317");
        let c = Config::parse(
            "[export]\nendpoint = \"https://collector:4317\"\ntoken = \" t0k \"\n\
             [export.tls]\nca = \"/ca.pem\"\n\
             [metrics]\nlisten = \"127.0.0.1:9465\"\n\
             [[identity.rules]]\nname = \"checkout\"\ncmdline = \"*shop.py gateway*\"\n",
            "a.toml",
        )
        .unwrap();
        assert_eq!(c.token().unwrap().as_deref(), Some("t0k"));
        assert_eq!(c.identity.rules[0].name, "checkout");
        for (text, names) in [
            ("[export]\nendpont = \"x\"\n", "endpont"),
            ("[export]\nqueue_spans = \"many\"\n", "queue_spans"),
            ("[metrics]\nlisten = \"nowhere\"\n", "listen"),
            ("[identity]\nkubernetes = \"maybe\"\n", "maybe"),
            ("[export]\nendpoint = \"collector:4317\"\n", "http://"),
            (
                "[export]\nendpoint = \"http://c:4317\"\n[export.tls]\nca = \"/ca\"\n",
                "https://",
            ),
            (
                "[export]\nendpoint = \"https://c:4317\"\n[export.tls]\nca = \"/ca\"\ncert = \"/c\"\n",
                "cert and key",
            ),
            ("[[identity.rules]]\nname = \"\"\n", "rules[0]"),
        ] {
            let e = Config::parse(text, "a.toml").unwrap_err().to_string();
            assert!(e.contains(names) && e.contains("a.toml"), "{text}: {e}");
        }
        let e = Config::load(Path::new("/nonexistent/tangle.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/tangle.toml"), "{e}");
    }
}
