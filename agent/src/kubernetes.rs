//! Pods and services from the Kubernetes API: the pod a container's cgroup
//! names (uid -> name, namespace, node, workload), and the service at an
//! address (pod IPs and ClusterIPs, on any node) for calls whose other end
//! this agent does not see. Listed at start and then every `REFRESH`.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use serde::Deserialize;

/// How often pods and services are listed again.
pub const REFRESH: Duration = Duration::from_secs(30);
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The Kubernetes API could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// Not in a cluster and no API address configured.
    #[error(
        "not running in Kubernetes (KUBERNETES_SERVICE_HOST unset) and no identity.kubernetes_api"
    )]
    NotInCluster,
    /// The service account's token or CA could not be read.
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("no usable certificate in {path}: {message}")]
    Certificate { path: String, message: String },
    /// The request failed (connection, TLS, or an error status).
    #[error("GET {url}: {message}")]
    Request { url: String, message: String },
    /// The answer is not the list expected.
    #[error("GET {url}: not a list of {what}")]
    Decode {
        url: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// A workload kind, as an OpenTelemetry resource attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
}

impl WorkloadKind {
    pub fn attribute(self) -> &'static str {
        match self {
            Self::Deployment => "k8s.deployment.name",
            Self::ReplicaSet => "k8s.replicaset.name",
            Self::StatefulSet => "k8s.statefulset.name",
            Self::DaemonSet => "k8s.daemonset.name",
            Self::Job => "k8s.job.name",
            Self::CronJob => "k8s.cronjob.name",
        }
    }
}

/// What Tangle keeps of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node: Option<String>,
    pub workload: Option<(WorkloadKind, String)>,
    /// The `app.kubernetes.io/name` label.
    pub app_name: Option<String>,
}

impl PodMeta {
    /// The service name the pod's processes get.
    pub fn service_name(&self) -> &str {
        self.app_name
            .as_deref()
            .or(self.workload.as_ref().map(|w| w.1.as_str()))
            .unwrap_or(&self.name)
    }
}

#[derive(Deserialize)]
struct List<T> {
    items: Vec<T>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectMeta {
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    owner_references: Vec<OwnerReference>,
}

#[derive(Deserialize)]
struct OwnerReference {
    kind: String,
    name: String,
    #[serde(default)]
    controller: bool,
}

#[derive(Deserialize)]
struct Pod {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: PodSpec,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    node_name: Option<String>,
    #[serde(default)]
    host_network: bool,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default, rename = "podIPs")]
    pod_ips: Vec<PodIp>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(default)]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    init_container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatus {
    /// `RUNTIME://ID`, once the container was created.
    #[serde(rename = "containerID")]
    container_id: Option<String>,
}

#[derive(Deserialize)]
struct PodIp {
    ip: String,
}

#[derive(Deserialize)]
struct Service {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: ServiceSpec,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceSpec {
    #[serde(default, rename = "clusterIPs")]
    cluster_ips: Vec<String>,
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(default)]
    selector: BTreeMap<String, String>,
}

/// The workload that controls a pod: a ReplicaSet named after its
/// Deployment plus the pod-template hash is the Deployment.
fn workload(meta: &ObjectMeta) -> Option<(WorkloadKind, String)> {
    let owner = meta
        .owner_references
        .iter()
        .find(|o| o.controller)
        .or(meta.owner_references.first())?;
    let kind = match owner.kind.as_str() {
        "ReplicaSet" => {
            let deployment = meta
                .labels
                .get("pod-template-hash")
                .and_then(|h| owner.name.strip_suffix(h.as_str()))
                .and_then(|n| n.strip_suffix('-'));
            return Some(match deployment {
                Some(d) => (WorkloadKind::Deployment, d.to_owned()),
                None => (WorkloadKind::ReplicaSet, owner.name.clone()),
            });
        }
        "StatefulSet" => WorkloadKind::StatefulSet,
        "DaemonSet" => WorkloadKind::DaemonSet,
        "Job" => WorkloadKind::Job,
        "CronJob" => WorkloadKind::CronJob,
        _ => return None,
    };
    Some((kind, owner.name.clone()))
}

/// The cluster as last listed.
#[derive(Debug, Default)]
pub struct Cluster {
    pods: HashMap<String, Arc<PodMeta>>,
    /// Container id (without the runtime's prefix) to its pod.
    containers: HashMap<String, Arc<PodMeta>>,
    /// Pod IPs and ClusterIPs to a service name.
    by_ip: HashMap<IpAddr, String>,
}

impl Cluster {
    /// From the JSON of `GET /api/v1/pods` and `GET /api/v1/services`.
    pub fn from_lists(pods: &[u8], services: &[u8]) -> Result<Self, serde_json::Error> {
        let pods: List<Pod> = serde_json::from_slice(pods)?;
        let services: List<Service> = serde_json::from_slice(services)?;
        let mut c = Cluster::default();
        let mut labelled = Vec::new();
        for p in pods.items {
            let meta = Arc::new(PodMeta {
                uid: p.metadata.uid.clone(),
                name: p.metadata.name.clone(),
                namespace: p.metadata.namespace.clone(),
                node: p.spec.node_name.clone(),
                workload: workload(&p.metadata),
                app_name: p.metadata.labels.get("app.kubernetes.io/name").cloned(),
            });
            // Host-network pods share the node's address: it names none of them.
            if !p.spec.host_network {
                let ips = p.status.pod_ips.iter().map(|i| i.ip.as_str());
                for ip in ips.chain(p.status.pod_ip.as_deref()) {
                    if let Ok(ip) = ip.parse() {
                        c.by_ip.insert(ip, meta.service_name().to_owned());
                    }
                }
            }
            let statuses = p.status.container_statuses.iter();
            for status in statuses.chain(&p.status.init_container_statuses) {
                if let Some((_, id)) = status
                    .container_id
                    .as_deref()
                    .and_then(|i| i.split_once("://"))
                {
                    c.containers.insert(id.to_owned(), meta.clone());
                }
            }
            labelled.push((p.metadata.labels, meta.clone()));
            c.pods.insert(meta.uid.clone(), meta);
        }
        for s in services.items {
            // Named like the pods it selects, so both ends agree; else the Service's name.
            let selected = (!s.spec.selector.is_empty())
                .then(|| {
                    labelled.iter().find(|(labels, meta)| {
                        meta.namespace == s.metadata.namespace
                            && s.spec
                                .selector
                                .iter()
                                .all(|(k, v)| labels.get(k) == Some(v))
                    })
                })
                .flatten();
            let name = selected.map_or(s.metadata.name.clone(), |(_, m)| {
                m.service_name().to_owned()
            });
            let ips = s.spec.cluster_ips.iter().map(String::as_str);
            for ip in ips.chain(s.spec.cluster_ip.as_deref()) {
                if let Ok(ip) = ip.parse() {
                    c.by_ip.insert(ip, name.clone());
                }
            }
        }
        Ok(c)
    }

    pub fn pod(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.pods.get(uid).cloned()
    }

    /// The pod a container (by its runtime id) belongs to.
    pub fn pod_of_container(&self, id: &str) -> Option<Arc<PodMeta>> {
        self.containers.get(id).cloned()
    }

    pub fn peer(&self, ip: IpAddr) -> Option<String> {
        self.by_ip.get(&ip).cloned()
    }

    pub fn len(&self) -> (usize, usize) {
        (self.pods.len(), self.by_ip.len())
    }
}

/// A client of the Kubernetes API, with the service account's credentials.
pub struct KubeClient {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

fn read(path: &Path) -> Result<Vec<u8>, KubeError> {
    std::fs::read(path).map_err(|source| KubeError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl KubeClient {
    /// The API at `base` (http:// or https://), with a bearer token and the
    /// CA (PEM) that signed the API server's certificate.
    pub fn new(base: &str, token: Option<String>, ca: Option<&Path>) -> Result<Self, KubeError> {
        let mut builder = ureq::AgentBuilder::new().timeout(Duration::from_secs(10));
        if let Some(ca) = ca {
            use rustls_pki_types::{CertificateDer, pem::PemObject as _};
            let pem = read(ca)?;
            let bad = |message: String| KubeError::Certificate {
                path: ca.display().to_string(),
                message,
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots
                    .add(cert.map_err(|e| bad(e.to_string()))?)
                    .map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("no certificate".into()));
            }
            let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            builder = builder.tls_config(Arc::new(tls));
        }
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            agent: builder.build(),
        })
    }

    /// The API from inside a pod: its address from the environment, the
    /// service account's token and CA from their files.
    pub fn in_cluster() -> Result<Self, KubeError> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| KubeError::NotInCluster)?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let dir = Path::new(SERVICE_ACCOUNT);
        let token = String::from_utf8_lossy(&read(&dir.join("token"))?)
            .trim()
            .to_owned();
        Self::new(
            &format!("https://{host}:{port}"),
            Some(token),
            Some(&dir.join("ca.crt")),
        )
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, KubeError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.get(&url);
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let resp = req.call().map_err(|e| KubeError::Request {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).map_err(|e| {
            KubeError::Request {
                url,
                message: e.to_string(),
            }
        })?;
        Ok(body)
    }

    /// Lists pods and services cluster-wide.
    pub fn list(&self) -> Result<Cluster, KubeError> {
        let pods = self.get("/api/v1/pods")?;
        let services = self.get("/api/v1/services")?;
        Cluster::from_lists(&pods, &services).map_err(|source| KubeError::Decode {
            url: self.base.clone(),
            what: "pods and services",
            source,
        })
    }
}

/// Lists the cluster now (so the first processes are named), then every
/// [`REFRESH`] in a thread of its own; failures are logged and keep the
/// last good listing.
pub fn watch(client: KubeClient) -> Arc<RwLock<Cluster>> {
    let cluster = Arc::new(RwLock::new(Cluster::default()));
    let shared = cluster.clone();
    let refresh = move |first: bool| match client.list() {
        Ok(c) => {
            let (pods, addresses) = c.len();
            if first {
                log::info!("kubernetes: {pods} pods, {addresses} addresses");
            }
            if let Ok(mut w) = shared.write() {
                *w = c;
            }
        }
        Err(e) => log::warn!("kubernetes: {e}"),
    };
    refresh(true);
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(REFRESH);
            refresh(false);
        }
    });
    cluster
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_workloads_and_services() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubernetes");
        let pods = std::fs::read(dir.join("pods.json")).unwrap();
        let services = std::fs::read(dir.join("services.json")).unwrap();
        let c = Cluster::from_lists(&pods, &services).unwrap();
        let checkout = c.pod("5c1e4b7a-2f3d-4e8a-9b6c-1d2e3f4a5b6c").unwrap();
        assert_eq!(
            checkout.workload,
            Some((WorkloadKind::Deployment, "checkout".into()))
        );
        assert_eq!(checkout.service_name(), "checkout");
        assert_eq!(checkout.node.as_deref(), Some("node-a"));
        let by_container = c
            .pod_of_container("4f1d0c7d6f2a9e7b3c5d8e1f0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b")
            .expect("the pod from its container's id");
        assert_eq!(by_container.uid, checkout.uid);
        let db = c.pod("9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d").unwrap();
        assert_eq!(
            db.workload.as_ref().map(|w| w.0),
            Some(WorkloadKind::StatefulSet)
        );
        assert_eq!(
            db.service_name(),
            "postgres",
            "the app.kubernetes.io/name label first"
        );
        // Pods on any node, by address; ClusterIP named like the pods it selects.
        assert_eq!(
            c.peer("10.244.1.7".parse().unwrap()).as_deref(),
            Some("checkout")
        );
        assert_eq!(
            c.peer("10.96.12.34".parse().unwrap()).as_deref(),
            Some("checkout")
        );
        assert_eq!(
            c.peer("10.96.0.10".parse().unwrap()).as_deref(),
            Some("kube-dns")
        );
        assert_eq!(
            c.peer("192.168.1.20".parse().unwrap()),
            None,
            "host network"
        );
        assert!(Cluster::from_lists(b"{}", &services).is_err());
    }

    #[test]
    fn unusable_credentials_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("tangle-k8s-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let e = KubeClient::new("https://10.96.0.1", None, Some(&ca))
            .err()
            .expect("no certificate in the file")
            .to_string();
        assert!(e.contains("ca.crt"), "{e}");
        let e = KubeClient::new("https://10.96.0.1", None, Some(&dir.join("absent")))
            .err()
            .expect("no file")
            .to_string();
        assert!(e.contains("absent"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
