//! Service identity end to end: real processes in real cgroups named as
//! systemd and a container runtime name theirs, one with
//! `OTEL_SERVICE_NAME`, one matched by a naming rule of the config file;
//! the resources of the exported spans say who each is.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

mod support;

use std::{process::Command, time::Duration};

use support::{otlp::*, *};

const CONTAINER_ID: &str = "3c5e7a9b1d2f4e6a8c0b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c";

/// cgroups made for the test, removed when dropped (once empty).
struct Groups(Vec<std::path::PathBuf>);

impl Drop for Groups {
    fn drop(&mut self) {
        for g in self.0.iter().rev() {
            let _ = std::fs::remove_dir(g);
        }
    }
}

/// Runs `cmd` (a shell command line) inside cgroup `group`.
fn in_cgroup(group: &std::path::Path, cmd: &str) -> Command {
    let mut c = Command::new("sh");
    c.args([
        "-c",
        &format!("echo $$ > {}/cgroup.procs && exec {cmd}", group.display()),
    ]);
    c
}

#[test]
fn services_named_from_systemd_containers_environment_and_rules() {
    let name = "services_named_from_systemd_containers_environment_and_rules";
    if require(name, &["curl", "python3"]).is_none() {
        return;
    }
    let Some(root) = cgroup2_root_or_skip(name) else {
        return;
    };
    let port = free_port();
    let slice = root.join(format!("tangle-test-{port}.slice"));
    let unit = slice.join("shop-api.service");
    let container = slice.join(format!("docker-{CONTAINER_ID}.scope"));
    let _groups = Groups(vec![slice.clone(), unit.clone(), container.clone()]);
    for g in [&unit, &container] {
        std::fs::create_dir_all(g).unwrap();
    }
    let config = std::env::temp_dir().join(format!("tangle-identity-{port}.toml"));
    std::fs::write(
        &config,
        "[[identity.rules]]\nname = \"smoke-test\"\nexe = \"python3\"\ncmdline = \"*/rule-me\"\n",
    )
    .unwrap();
    let otlp_port = free_port();
    let received = receiver(otlp_port);
    let _server = Proc::spawn_ready(
        &mut in_cgroup(
            &unit,
            &format!("python3 -u -m http.server {port} --bind 127.0.0.1"),
        ),
        "Serving HTTP",
    );
    let (agent, ready) = run_agent(
        otlp_port,
        &[
            "--duration",
            "8s",
            "--port",
            &port.to_string(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let curl = |path: &str| format!("curl -sS -o /dev/null {}", url(path));
    assert!(
        in_cgroup(&container, &curl("/in-container"))
            .status()
            .unwrap()
            .success()
    );
    // The environment and the command line are read while the process
    // lives: these clients, like services, outlive their call a little.
    // (curl above is gone before it is looked at: its cgroup is found by id.)
    for (path, env) in [("/billing", Some("billing")), ("/rule-me", None)] {
        let mut c = Command::new("python3");
        c.args([
            "-c",
            "import http.client, sys, time\n\
             c = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1]))\n\
             c.request('GET', sys.argv[2]); c.getresponse().read(); time.sleep(1)",
            &port.to_string(),
            path,
        ]);
        if let Some(s) = env {
            c.env("OTEL_SERVICE_NAME", s);
        }
        assert!(c.status().unwrap().success());
    }
    wait_for("six spans", Duration::from_secs(20), || received.len() >= 6);
    assert!(agent.wait_with_output().unwrap().status.success());
    let _ = std::fs::remove_file(&ready);
    let _ = std::fs::remove_file(&config);

    let resources = received.resources.lock().unwrap().clone();
    let get = |svc: &str, key: &str| {
        resources
            .get(svc)
            .and_then(|r| r.get(key))
            .cloned()
            .unwrap_or_else(|| panic!("{svc}: no {key} in {resources:#?}"))
    };
    assert_eq!(get("shop-api", "tangle.service.name.source"), "systemd");
    assert_eq!(get("shop-api", "tangle.systemd.unit"), "shop-api.service");
    assert_eq!(get("shop-api", "process.executable.name"), "python3");
    assert_eq!(get("curl", "tangle.service.name.source"), "executable");
    assert_eq!(get("curl", "container.id"), CONTAINER_ID);
    assert_eq!(get("curl", "container.runtime"), "docker");
    assert_eq!(get("billing", "tangle.service.name.source"), "otel_env");
    assert_eq!(get("smoke-test", "tangle.service.name.source"), "rule");
    // Each client span is in its own service's resource.
    let spans = received.spans();
    for (svc, path) in [
        ("curl", "/in-container"),
        ("billing", "/billing"),
        ("smoke-test", "/rule-me"),
    ] {
        assert!(
            spans.iter().any(|(s, sp)| s == svc
                && sp.kind == 3
                && attr(sp, "url.path").as_deref() == Some(path)),
            "{svc} made the call to {path}"
        );
    }
    assert_eq!(
        spans
            .iter()
            .filter(|(s, sp)| s == "shop-api" && sp.kind == 2)
            .count(),
        3
    );
}

/// A process in a pod's cgroup (the systemd cgroup driver's layout) is
/// named from the pod the Kubernetes API lists for this agent's node, and a
/// process in a pod that appears later from the API's watch. The API is
/// `fixtures/kube_api.py` (no API server can run on this machine): the real
/// list and watch formats, with the field selector honoured and every
/// request logged, so the test also sees what the agent asked.
#[test]
fn pods_named_from_the_kubernetes_api() {
    let name = "pods_named_from_the_kubernetes_api";
    if require(name, &["curl", "python3"]).is_none() {
        return;
    }
    let Some(root) = cgroup2_root_or_skip(name) else {
        return;
    };
    let (port, later_port) = (free_port(), free_port());
    let api_dir = std::env::temp_dir().join(format!("tangle-k8s-api-{port}"));
    std::fs::create_dir_all(api_dir.join("events")).unwrap();
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubernetes");
    std::fs::copy(fixtures.join("pods.json"), api_dir.join("pods.json")).unwrap();
    std::fs::copy(
        fixtures.join("services.json"),
        api_dir.join("services.json"),
    )
    .unwrap();
    let api_port = free_port();
    let _api = Proc::spawn_ready(
        Command::new("python3")
            .arg("-u")
            .arg(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube_api.py"),
            )
            .arg(api_port.to_string())
            .arg(&api_dir),
        "kubernetes api on",
    );
    let slice = root.join(format!("tangle-test-{port}.slice"));
    let pods = slice
        .join("kubepods.slice")
        .join("kubepods-burstable.slice");
    let pod = pods.join("kubepods-burstable-pod5c1e4b7a_2f3d_4e8a_9b6c_1d2e3f4a5b6c.slice");
    let container = pod.join(format!("cri-containerd-{CONTAINER_ID}.scope"));
    let later_pod = pods.join(format!(
        "kubepods-burstable-pod{}.slice",
        LATER_POD.replace('-', "_")
    ));
    let later_container = later_pod.join(format!("cri-containerd-{LATER_CONTAINER}.scope"));
    let mut made = vec![slice.clone()];
    for leaf in [&container, &later_container] {
        let mut at = slice.clone();
        for part in leaf.strip_prefix(&slice).unwrap() {
            at = at.join(part);
            if !made.contains(&at) {
                made.push(at.clone());
            }
        }
    }
    let _groups = Groups(made);
    std::fs::create_dir_all(&container).unwrap();
    std::fs::create_dir_all(&later_container).unwrap();
    let config = api_dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[identity]\nkubernetes_api = \"http://127.0.0.1:{api_port}\"\nnode_name = \"node-a\"\n"
        ),
    )
    .unwrap();
    let otlp_port = free_port();
    let received = receiver(otlp_port);
    let _server = Proc::spawn_ready(
        &mut in_cgroup(
            &container,
            &format!("python3 -u -m http.server {port} --bind 127.0.0.1"),
        ),
        "Serving HTTP",
    );
    let (agent, ready) = run_agent(
        otlp_port,
        &["--duration", "10s", "--config", config.to_str().unwrap()],
    );
    // A pod scheduled after the agent started, as the API's watch tells it.
    let event = serde_json::json!({
        "type": "ADDED",
        "object": {
            "metadata": {
                "name": "payments-5f6b7c8d9-q7r8s", "namespace": "shop", "uid": LATER_POD,
                "resourceVersion": "184470",
                "labels": {"pod-template-hash": "5f6b7c8d9"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "payments-5f6b7c8d9", "controller": true}]
            },
            "spec": {"nodeName": "node-a"},
            "status": {"podIP": "10.244.1.9", "containerStatuses": [{"containerID": format!("containerd://{LATER_CONTAINER}")}]}
        }
    });
    let events = api_dir.join("events");
    std::fs::write(events.join(".pods-1.json"), event.to_string()).unwrap();
    std::fs::rename(events.join(".pods-1.json"), events.join("pods-1.json")).unwrap();
    let log = || std::fs::read_to_string(api_dir.join("requests.log")).unwrap_or_default();
    wait_for(
        "a watch of this node's pods",
        Duration::from_secs(10),
        || {
            log()
                .lines()
                .any(|l| l.starts_with("/api/v1/pods?") && l.contains("watch=1"))
        },
    );
    let _later = Proc::spawn_ready(
        &mut in_cgroup(
            &later_container,
            &format!("python3 -u -m http.server {later_port} --bind 127.0.0.1"),
        ),
        "Serving HTTP",
    );
    // The event reaches the agent within the fixture's 0.1 s poll, and its
    // view of the cluster is made again within a second (agent/src/identity/kubernetes.rs,
    // REBUILD): a process seen before that is named without its pod.
    std::thread::sleep(Duration::from_millis(2500));
    curl(&format!("http://127.0.0.1:{port}/cart"), &[]);
    curl(&format!("http://127.0.0.1:{later_port}/pay"), &[]);
    wait_for("both servers' spans", Duration::from_secs(20), || {
        let r = received.resources.lock().unwrap();
        r.contains_key("checkout") && r.contains_key("payments")
    });
    assert!(agent.wait_with_output().unwrap().status.success());
    let _ = std::fs::remove_file(&ready);
    let requests = log();
    let _ = std::fs::remove_dir_all(&api_dir);
    // Only this node's pods asked for, listed and watched; services of
    // every node (a ClusterIP names a call to any node).
    let pod_requests: Vec<&str> = requests
        .lines()
        .filter(|l| l.starts_with("/api/v1/pods"))
        .collect();
    assert!(pod_requests.len() >= 2, "a list and a watch: {requests}");
    for r in &pod_requests {
        assert!(
            r.contains("fieldSelector=spec.nodeName%3Dnode-a"),
            "not node-scoped: {r}"
        );
    }
    assert!(
        requests
            .lines()
            .any(|l| l.starts_with("/api/v1/services?") && l.contains("watch=1"))
    );
    let resources = received.resources.lock().unwrap().clone();
    let checkout = resources
        .get("checkout")
        .unwrap_or_else(|| panic!("the pod's process is `checkout`: {resources:#?}"));
    for (key, value) in [
        ("tangle.service.name.source", "kubernetes"),
        ("k8s.pod.name", "checkout-7d9f8b6c5d-x2x4k"),
        ("k8s.pod.uid", "5c1e4b7a-2f3d-4e8a-9b6c-1d2e3f4a5b6c"),
        ("k8s.namespace.name", "shop"),
        ("k8s.node.name", "node-a"),
        ("k8s.deployment.name", "checkout"),
        ("container.id", CONTAINER_ID),
        ("container.runtime", "containerd"),
    ] {
        assert_eq!(checkout.get(key).map(String::as_str), Some(value), "{key}");
    }
    let payments = resources
        .get("payments")
        .unwrap_or_else(|| panic!("the watched pod's process is `payments`: {resources:#?}"));
    for (key, value) in [
        ("k8s.pod.name", "payments-5f6b7c8d9-q7r8s"),
        ("k8s.pod.uid", LATER_POD),
        ("k8s.deployment.name", "payments"),
        ("container.id", LATER_CONTAINER),
    ] {
        assert_eq!(payments.get(key).map(String::as_str), Some(value), "{key}");
    }
}

/// The pod the API's watch adds after the agent started, and its container.
const LATER_POD: &str = "7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a0b";
const LATER_CONTAINER: &str = "9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c";
