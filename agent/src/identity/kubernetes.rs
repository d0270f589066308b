//! Pods and services from the Kubernetes API: the pod a container's cgroup
//! names (uid -> name, namespace, node, workload), and the service at an
//! address (pod IPs and ClusterIPs) for calls whose other end this agent
//! does not see. Listed at start, then watched: the API sends each change,
//! so a node's agent costs the API server one request per change, not a
//! list of the whole cluster every so often. With the node's name given,
//! only that node's pods are listed and watched (a field selector).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use serde::{Deserialize, de::DeserializeOwned};

/// How long one watch request lasts before it is made again from where it
/// ended (the API server ends it then; a watch cannot be held forever).
const WATCH_SECONDS: u64 = 290;
/// Bytes of one watch event, at most: past it the stream is dropped.
const MAX_EVENT: u64 = 4 << 20;
/// Bytes of one list, at most: past it the list is refused.
const MAX_LIST: u64 = 256 << 20;
/// Objects of one kind kept, at most: past it new ones are left out.
const MAX_OBJECTS: usize = 100_000;
/// A Service's selector, entries at most, for naming it.
const MAX_SELECTOR: usize = 32;
/// The first wait after a failure, doubled up to [`MAX_RETRY`] (with jitter).
const RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// The cluster view is made again at most this often.
const REBUILD: Duration = Duration::from_secs(1);
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
    #[serde(default)]
    metadata: ListMeta,
    items: Vec<T>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[serde(default)]
    resource_version: String,
}

/// One line of a watch: a change to an object, decoded once its type says how.
#[derive(Deserialize)]
struct WatchEvent<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow)]
    object: &'a serde_json::value::RawValue,
}

/// What any object (a bookmark's too) says of where the watch is.
#[derive(Deserialize)]
struct Versioned {
    #[serde(default)]
    metadata: VersionMeta,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionMeta {
    #[serde(default)]
    resource_version: String,
}

#[derive(Clone, Deserialize)]
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

#[derive(Clone, Deserialize)]
struct OwnerReference {
    kind: String,
    name: String,
    #[serde(default)]
    controller: bool,
}

#[derive(Clone, Deserialize)]
struct Pod {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: PodSpec,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    node_name: Option<String>,
    #[serde(default)]
    host_network: bool,
}

#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    /// `Succeeded` and `Failed` pods hold no address: it may be another's now.
    #[serde(default)]
    phase: String,
    #[serde(default, rename = "podIPs")]
    pod_ips: Vec<PodIp>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(default)]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    init_container_statuses: Vec<ContainerStatus>,
}

#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatus {
    /// `RUNTIME://ID`, once the container was created.
    #[serde(rename = "containerID")]
    container_id: Option<String>,
}

#[derive(Clone, Deserialize)]
struct PodIp {
    ip: String,
}

/// What naming takes of a Service's metadata (labels and owners are not
/// kept: the Services of every namespace are watched).
#[derive(Clone, Deserialize)]
struct ServiceMeta {
    name: String,
    #[serde(default)]
    namespace: String,
}

#[derive(Clone, Deserialize)]
struct Service {
    metadata: ServiceMeta,
    #[serde(default)]
    spec: ServiceSpec,
}

#[derive(Clone, Default, Deserialize)]
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

/// The name of a Service's ClusterIPs, from the Service alone, so that
/// every node's agent names it alike (each knows only its own node's
/// pods): the `app.kubernetes.io/name` its selector picks (what the pods'
/// processes are named), else its `app`, else the Service's own name.
fn service_name(s: &Service) -> String {
    let selector = &s.spec.selector;
    (selector.len() <= MAX_SELECTOR)
        .then(|| {
            selector
                .get("app.kubernetes.io/name")
                .or_else(|| selector.get("app"))
        })
        .flatten()
        .unwrap_or(&s.metadata.name)
        .clone()
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
        Ok(Self::build(pods.items.iter(), services.items.iter()))
    }

    fn build<'a>(
        pods: impl Iterator<Item = &'a Pod>,
        services: impl Iterator<Item = &'a Service>,
    ) -> Self {
        let mut c = Cluster::default();
        for p in pods {
            let meta = Arc::new(PodMeta {
                uid: p.metadata.uid.clone(),
                name: p.metadata.name.clone(),
                namespace: p.metadata.namespace.clone(),
                node: p.spec.node_name.clone(),
                workload: workload(&p.metadata),
                app_name: p.metadata.labels.get("app.kubernetes.io/name").cloned(),
            });
            // Host-network pods share the node's address: it names none of
            // them; a finished pod's address may be another pod's now.
            let finished = matches!(p.status.phase.as_str(), "Succeeded" | "Failed");
            if !p.spec.host_network && !finished {
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
            c.pods.insert(meta.uid.clone(), meta);
        }
        for s in services {
            let name = service_name(s);
            let ips = s.spec.cluster_ips.iter().map(String::as_str);
            for ip in ips.chain(s.spec.cluster_ip.as_deref()) {
                if let Ok(ip) = ip.parse() {
                    c.by_ip.insert(ip, name.clone());
                }
            }
        }
        c
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

    fn request(&self, path: &str, timeout: Duration) -> Result<ureq::Response, KubeError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.get(&url).timeout(timeout);
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        req.call().map_err(|e| KubeError::Request {
            url,
            message: e.to_string(),
        })
    }

    /// A list of `what` at `path`, decoded.
    fn list<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &'static str,
    ) -> Result<List<T>, KubeError> {
        let url = format!("{}{path}", self.base);
        let body = self.request(path, Duration::from_secs(120))?.into_reader();
        // Past MAX_LIST the JSON ends early: refused as not a list.
        let body = std::io::Read::take(body, MAX_LIST);
        serde_json::from_reader(std::io::BufReader::new(body)).map_err(|source| KubeError::Decode {
            url,
            what,
            source,
        })
    }
}

/// Where a kind of object is listed and watched, and what is kept of it.
trait Watched: DeserializeOwned + Clone + Send + 'static {
    const WHAT: &'static str;
    fn key(&self) -> String;
    /// Those of its kind among `objects`.
    fn held(objects: &mut Objects) -> &mut HashMap<String, Self>;
}

impl Watched for Pod {
    const WHAT: &'static str = "pods";
    fn key(&self) -> String {
        self.metadata.uid.clone()
    }
    fn held(objects: &mut Objects) -> &mut HashMap<String, Self> {
        &mut objects.pods
    }
}

impl Watched for Service {
    const WHAT: &'static str = "services";
    fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }
    fn held(objects: &mut Objects) -> &mut HashMap<String, Self> {
        &mut objects.services
    }
}

/// The objects as last listed and changed since, from which [`Cluster`]
/// is made again after each change.
#[derive(Default)]
struct Objects {
    pods: HashMap<String, Pod>,
    services: HashMap<String, Service>,
}

/// The cluster as the watches know it, shared with the identities.
#[derive(Clone)]
struct Shared {
    objects: Arc<std::sync::Mutex<Objects>>,
    cluster: Arc<RwLock<Cluster>>,
    /// Objects changed since the cluster was last made.
    dirty: Arc<std::sync::atomic::AtomicBool>,
    /// When the cluster was last made.
    made: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl Shared {
    /// Applies `change` to the objects. The cluster is made again at once
    /// if it was not in the last [`REBUILD`], else within it (by the
    /// thread that calls [`Shared::rebuild`]): a lone change is seen at
    /// once, a burst costs one rebuild a second.
    fn change(&self, change: impl FnOnce(&mut Objects)) {
        let Ok(mut objects) = self.objects.lock() else {
            return;
        };
        change(&mut objects);
        drop(objects);
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
        let recent = self
            .made
            .lock()
            .ok()
            .and_then(|m| *m)
            .is_some_and(|at| at.elapsed() < REBUILD);
        if !recent {
            self.rebuild();
        }
    }

    /// Makes the cluster again from the objects, if they changed.
    fn rebuild(&self) {
        if !self.dirty.swap(false, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let Ok(objects) = self.objects.lock() else {
            return;
        };
        let fresh = Cluster::build(objects.pods.values(), objects.services.values());
        drop(objects);
        if let Ok(mut w) = self.cluster.write() {
            *w = fresh;
        }
        if let Ok(mut m) = self.made.lock() {
            *m = Some(std::time::Instant::now());
        }
    }
}

/// Lists `T` (with `selector`, a field selector), replacing what was
/// known of them; returns the list's resource version.
fn relist<T: Watched>(
    client: &KubeClient,
    shared: &Shared,
    selector: &str,
) -> Result<String, KubeError> {
    let list: List<T> = client.list(&format!("/api/v1/{}{selector}", T::WHAT), T::WHAT)?;
    let version = list.metadata.resource_version;
    if list.items.len() > MAX_OBJECTS {
        log::warn!(
            "kubernetes: {} {}, more than the {MAX_OBJECTS} kept: the rest are not used for naming",
            list.items.len(),
            T::WHAT
        );
    }
    shared.change(|o| {
        *T::held(o) = list
            .items
            .into_iter()
            .take(MAX_OBJECTS)
            .map(|t| (t.key(), t))
            .collect();
    });
    Ok(version)
}

/// How a watch ended.
enum Ended {
    /// The server ended it (its timeout): go on from this version.
    At(String),
    /// The stream broke: go on from this version after a wait.
    Broken(String),
    /// The version is too old, or the stream made no sense: list again.
    Relist,
}

/// Follows changes to `T` from `version` until the watch ends.
fn follow<T: Watched>(
    client: &KubeClient,
    shared: &Shared,
    selector: &str,
    mut version: String,
) -> Result<Ended, KubeError> {
    use std::io::BufRead as _;
    let sep = if selector.is_empty() { '?' } else { '&' };
    let path = format!(
        "/api/v1/{}{selector}{sep}watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={}",
        T::WHAT,
        encode_query(&version)
    );
    let response = client.request(&path, Duration::from_secs(WATCH_SECONDS + 30))?;
    let mut lines = std::io::BufReader::new(response.into_reader());
    let mut line = Vec::new();
    loop {
        line.clear();
        // One event per line, each at most MAX_EVENT bytes.
        match std::io::Read::take(&mut lines, MAX_EVENT).read_until(b'\n', &mut line) {
            Ok(0) => return Ok(Ended::At(version)),
            Ok(n) if n as u64 == MAX_EVENT && line.last() != Some(&b'\n') => {
                log::debug!(
                    "kubernetes: watching {}: an event past {MAX_EVENT} bytes",
                    T::WHAT
                );
                return Ok(Ended::Relist);
            }
            Ok(_) => {}
            Err(e) => {
                log::debug!("kubernetes: watching {}: {e}", T::WHAT);
                return Ok(Ended::Broken(version));
            }
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(event) = serde_json::from_slice::<WatchEvent>(&line) else {
            log::debug!("kubernetes: watching {}: a line that is no event", T::WHAT);
            return Ok(Ended::Relist);
        };
        match event.kind.as_str() {
            "ADDED" | "MODIFIED" | "DELETED" => {
                let Ok(object) = serde_json::from_str::<T>(event.object.get()) else {
                    return Ok(Ended::Relist);
                };
                let gone = event.kind == "DELETED";
                log::debug!("kubernetes: {} {} {}", event.kind, T::WHAT, object.key());
                shared.change(|o| {
                    let held = T::held(o);
                    let key = object.key();
                    if gone {
                        held.remove(&key);
                    } else if held.len() < MAX_OBJECTS || held.contains_key(&key) {
                        held.insert(key, object);
                    }
                });
            }
            "BOOKMARK" => {}
            // 410 Gone: the version is too old to watch from.
            _ => return Ok(Ended::Relist),
        }
        if let Ok(v) = serde_json::from_str::<Versioned>(event.object.get())
            && !v.metadata.resource_version.is_empty()
        {
            version = v.metadata.resource_version;
        }
    }
}

/// About `base`, give or take a quarter, so that the agents of a cluster
/// do not all come back at once.
fn jittered(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let quarter = base / 4;
    base - quarter + quarter.mul_f64(2.0 * f64::from(nanos) / 1e9)
}

/// Lists then watches `T` forever (a thread of its own): a watch goes on
/// from where the last one ended, and the objects are listed again only
/// when it cannot. Failures wait longer each time (to a minute, with
/// jitter), are logged, and keep the last good view.
fn keep_watching<T: Watched>(
    client: Arc<KubeClient>,
    shared: Shared,
    selector: String,
    mut version: Option<String>,
) {
    let warned = tangle_throttle::Throttled::default();
    let mut wait = RETRY;
    let back_off = |wait: &mut Duration| {
        std::thread::sleep(jittered(*wait));
        *wait = (*wait * 2).min(MAX_RETRY);
    };
    loop {
        let at = match version.take() {
            Some(v) => v,
            None => match relist::<T>(&client, &shared, &selector) {
                Ok(v) => v,
                Err(e) => {
                    tangle_throttle::warn!(warned, "kubernetes: {e}");
                    back_off(&mut wait);
                    continue;
                }
            },
        };
        let started = std::time::Instant::now();
        match follow::<T>(&client, &shared, &selector, at.clone()) {
            // A watch the server ends at once is not one to repeat at once.
            Ok(Ended::At(v)) if started.elapsed() >= RETRY => {
                version = Some(v);
                wait = RETRY;
            }
            Ok(Ended::At(v) | Ended::Broken(v)) => {
                version = Some(v);
                back_off(&mut wait);
            }
            Ok(Ended::Relist) => back_off(&mut wait),
            Err(e) => {
                tangle_throttle::warn!(warned, "kubernetes: {e}");
                // From the same version: a list is what costs the API server.
                version = Some(at);
                back_off(&mut wait);
            }
        }
    }
}

/// Lists the cluster now (so the first processes are named), then
/// watches pods and services in threads of their own. With `node`, only
/// that node's pods (services are cluster-wide: a ClusterIP names a call
/// to any node). Failures are logged and keep the last good view.
pub fn watch(client: KubeClient, node: Option<&str>) -> Arc<RwLock<Cluster>> {
    let client = Arc::new(client);
    let shared = Shared {
        objects: Default::default(),
        cluster: Default::default(),
        dirty: Default::default(),
        made: Default::default(),
    };
    let pod_selector = node.map_or_else(String::new, |n| {
        format!("?fieldSelector=spec.nodeName%3D{}", encode_query(n))
    });
    let pods = relist::<Pod>(&client, &shared, &pod_selector);
    let services = relist::<Service>(&client, &shared, "");
    shared.rebuild();
    match (&pods, &services) {
        (Ok(_), Ok(_)) => {
            let (pods, addresses) = shared.cluster.read().map(|c| c.len()).unwrap_or_default();
            let scope = node.map_or_else(|| "every node".to_owned(), |n| format!("node {n}"));
            log::info!("kubernetes: {pods} pods ({scope}), {addresses} addresses; watching");
        }
        (Err(e), _) | (_, Err(e)) => log::warn!("kubernetes: {e}"),
    }
    let cluster = shared.cluster.clone();
    let (c, s, view) = (client.clone(), shared.clone(), shared.clone());
    let spawned = std::thread::Builder::new()
        .name("tangle-k8s-view".into())
        .spawn(move || {
            loop {
                std::thread::sleep(REBUILD);
                view.rebuild();
            }
        })
        .and_then(|_| {
            std::thread::Builder::new()
                .name("tangle-k8s-pods".into())
                .spawn(move || keep_watching::<Pod>(c, s, pod_selector, pods.ok()))
        })
        .and_then(|_| {
            std::thread::Builder::new()
                .name("tangle-k8s-svcs".into())
                .spawn(move || {
                    keep_watching::<Service>(client, shared, String::new(), services.ok())
                })
        });
    if let Err(e) = spawned {
        log::warn!("kubernetes: cannot start watching: {e}; the first listing stays");
    }
    cluster
}

/// `text` for a URL's query: what is not unreserved, percent-encoded.
fn encode_query(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
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
