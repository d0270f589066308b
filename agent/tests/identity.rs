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

/// A process in a Kubernetes pod's cgroup (containerd under the systemd
/// driver) is named from the pod the API lists: here the API is a local
/// HTTP server answering `GET /api/v1/pods` and `/api/v1/services` with
/// lists in the API's format (no API server can run on this machine).
#[test]
fn pods_named_from_the_kubernetes_api() {
    let name = "pods_named_from_the_kubernetes_api";
    if require(name, &["curl", "python3"]).is_none() {
        return;
    }
    let Some(root) = cgroup2_root_or_skip(name) else {
        return;
    };
    let port = free_port();
    // The API's answers, laid out as paths.
    let api_dir = std::env::temp_dir().join(format!("tangle-k8s-api-{port}"));
    let v1 = api_dir.join("api/v1");
    std::fs::create_dir_all(&v1).unwrap();
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubernetes");
    std::fs::copy(fixtures.join("pods.json"), v1.join("pods")).unwrap();
    std::fs::copy(fixtures.join("services.json"), v1.join("services")).unwrap();
    let api_port = free_port();
    let _api = Proc::spawn_ready(
        Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                &api_port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(&api_dir),
        "Serving HTTP",
    );
    let slice = root.join(format!("tangle-test-{port}.slice"));
    let pod = slice
        .join("kubepods.slice")
        .join("kubepods-burstable.slice")
        .join("kubepods-burstable-pod5c1e4b7a_2f3d_4e8a_9b6c_1d2e3f4a5b6c.slice");
    let container = pod.join(format!("cri-containerd-{CONTAINER_ID}.scope"));
    let mut made = vec![slice.clone()];
    let mut at = slice.clone();
    for part in container.strip_prefix(&slice).unwrap() {
        at = at.join(part);
        made.push(at.clone());
    }
    let _groups = Groups(made);
    std::fs::create_dir_all(&container).unwrap();
    let config = api_dir.join("agent.toml");
    std::fs::write(
        &config,
        format!("[identity]\nkubernetes_api = \"http://127.0.0.1:{api_port}\"\n"),
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
        &[
            "--duration",
            "6s",
            "--port",
            &port.to_string(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    curl(&format!("http://127.0.0.1:{port}/cart"), &[]);
    wait_for("two spans", Duration::from_secs(20), || received.len() >= 2);
    assert!(agent.wait_with_output().unwrap().status.success());
    let _ = std::fs::remove_file(&ready);
    let _ = std::fs::remove_dir_all(&api_dir);
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
}
