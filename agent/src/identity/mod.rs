//! Who a process is: the service name its spans carry, and what it was
//! found from. Sources, first match wins:
//!
//! 1. a naming rule of the configuration;
//! 2. `OTEL_SERVICE_NAME` (or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`)
//!    in the process's environment: what the service says it is;
//! 3. Kubernetes: the pod's `app.kubernetes.io/name` label, else its
//!    workload (Deployment, StatefulSet, DaemonSet, Job), else the pod name;
//!    the pod is found from the container's cgroup (`kubernetes` module);
//! 4. the systemd unit the process runs in (`nginx.service` -> `nginx`);
//! 5. the program: the executable's file name (`/proc/PID/exe`, never
//!    the kernel's 15-byte `comm`), or for an interpreter (Python, Node,
//!    Java, ...) the script, module, jar or class it runs.
//!
//! Container runtimes (Docker, containerd, CRI-O, Podman) are recognised
//! from the cgroup path: their container id is a resource attribute.
//! Only the two OpenTelemetry variables are read from the environment, and
//! the command line is used for rules only: neither is exported.

pub mod kubernetes;
mod resolver;

pub use resolver::{Identities, IdentityCell, NamingStats};

use std::sync::Arc;

use crate::{config::NamingRule, identity::kubernetes::PodMeta};

/// Where a service name came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameSource {
    Rule,
    OtelEnv,
    Kubernetes,
    Systemd,
    Executable,
}

impl NameSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rule => "rule",
            Self::OtelEnv => "otel_env",
            Self::Kubernetes => "kubernetes",
            Self::Systemd => "systemd",
            Self::Executable => "executable",
        }
    }
}

/// A container, from the cgroup path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// `docker`, `containerd`, `cri-o` or `podman`; `unknown` for a bare id.
    pub runtime: &'static str,
    pub id: String,
}

/// What the cgroup path says about a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupFacts {
    pub systemd_unit: Option<String>,
    pub container: Option<Container>,
    /// The Kubernetes pod's uid.
    pub pod_uid: Option<String>,
}

/// What /proc says about a process.
#[derive(Clone, Debug, Default)]
pub struct ProcessFacts {
    /// The executable's file name (the `comm` only when /proc cannot say).
    pub exe: String,
    /// What the process runs: [`program_name`].
    pub program: String,
    /// The file name of the executable (`/proc/PID/exe`), if readable.
    pub executable_file: Option<String>,
    /// Arguments joined by spaces: for rules only, never exported.
    pub cmdline: String,
    /// From `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES`.
    pub otel_service_name: Option<String>,
    pub cgroup: CgroupFacts,
}

/// A process's identity, shared by its connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub service: String,
    pub source: NameSource,
    pub exe: String,
    /// One of Tangle's own processes: never traced.
    pub tangle: bool,
    pub cgroup: CgroupFacts,
    pub pod: Option<Arc<PodMeta>>,
}

impl Identity {
    /// A process known by its executable name alone.
    pub fn executable(exe: &str) -> Self {
        name(
            &[],
            &ProcessFacts {
                exe: exe.to_owned(),
                ..ProcessFacts::default()
            },
            None,
        )
    }

    /// OpenTelemetry resource attributes (semantic conventions).
    pub fn resource_attributes(&self) -> Vec<(&'static str, String)> {
        let mut a = vec![
            (tangle_wire::attr::SERVICE_NAME, self.service.clone()),
            ("process.executable.name", self.exe.clone()),
            (
                "tangle.service.name.source",
                self.source.as_str().to_owned(),
            ),
        ];
        if let Some(u) = &self.cgroup.systemd_unit {
            a.push(("tangle.systemd.unit", u.clone()));
        }
        if let Some(c) = &self.cgroup.container {
            a.push(("container.id", c.id.clone()));
            a.push(("container.runtime", c.runtime.to_owned()));
        }
        if let Some(uid) = &self.cgroup.pod_uid {
            a.push(("k8s.pod.uid", uid.clone()));
        }
        if let Some(p) = &self.pod {
            a.push(("k8s.pod.name", p.name.clone()));
            a.push(("k8s.namespace.name", p.namespace.clone()));
            if let Some(node) = &p.node {
                a.push(("k8s.node.name", node.clone()));
            }
            if let Some((kind, name)) = &p.workload {
                a.push((kind.attribute(), name.clone()));
            }
        }
        a
    }
}

/// `*` matches any run of characters; everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn rule_matches(r: &NamingRule, p: &ProcessFacts, pod: Option<&PodMeta>) -> bool {
    let check = |pattern: &Option<String>, value: Option<&str>| match pattern {
        None => true,
        Some(pat) => value.is_some_and(|v| glob(pat, v)),
    };
    check(&r.exe, Some(&p.exe))
        && check(&r.cmdline, Some(&p.cmdline))
        && check(&r.systemd_unit, p.cgroup.systemd_unit.as_deref())
        && check(
            &r.container_id,
            p.cgroup.container.as_ref().map(|c| c.id.as_str()),
        )
        && check(&r.k8s_namespace, pod.map(|p| p.namespace.as_str()))
        && check(&r.k8s_pod, pod.map(|p| p.name.as_str()))
        && check(
            &r.k8s_workload,
            pod.and_then(|p| p.workload.as_ref()).map(|w| w.1.as_str()),
        )
}

/// The service name for `p`, and where it came from.
pub fn name(rules: &[NamingRule], p: &ProcessFacts, pod: Option<&Arc<PodMeta>>) -> Identity {
    let (service, source) =
        if let Some(r) = rules.iter().find(|r| rule_matches(r, p, pod.map(|p| &**p))) {
            (r.name.clone(), NameSource::Rule)
        } else if let Some(s) = &p.otel_service_name {
            (s.clone(), NameSource::OtelEnv)
        } else if let Some(pod) = pod {
            (pod.service_name().to_owned(), NameSource::Kubernetes)
        } else if let Some(unit) = p
            .cgroup
            .systemd_unit
            .as_deref()
            .and_then(|u| u.strip_suffix(".service"))
        {
            // Template instances (`getty@tty1`) keep their template's name.
            let unit = unit.split('@').next().unwrap_or(unit);
            (unit.to_owned(), NameSource::Systemd)
        } else {
            let program = if p.program.is_empty() {
                &p.exe
            } else {
                &p.program
            };
            (program.clone(), NameSource::Executable)
        };
    Identity {
        service,
        source,
        exe: p.exe.clone(),
        tangle: p.executable_file.as_deref().is_some_and(is_tangle),
        cgroup: p.cgroup.clone(),
        pod: pod.cloned(),
    }
}

/// The file name of process `pid`'s executable, as /proc links it (a file
/// replaced since the start still counts as itself).
pub fn executable_file(pid: u32) -> Option<String> {
    let path = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = path.file_name()?.to_string_lossy();
    Some(name.strip_suffix(" (deleted)").unwrap_or(&name).to_owned())
}

/// Whether an executable is Tangle's own, by its file name. Not the
/// `comm`, which any process may set to anything: a service cannot hide
/// its traffic by calling itself `tangle-agent`. A program whose file is
/// named so is taken at its word, though (known limit: the file's identity
/// is not checked).
pub fn is_tangle(executable_file: &str) -> bool {
    matches!(executable_file, "tangle-agent" | "tangle-collector")
}

/// Reads the facts of process `pid` from /proc; when it is already gone,
/// `fallback` names it and `gone_cgroup` gives its cgroup facts.
pub fn inspect(
    pid: u32,
    fallback: &str,
    gone_cgroup: impl FnOnce() -> CgroupFacts,
) -> ProcessFacts {
    let proc = format!("/proc/{pid}");
    let executable_file = executable_file(pid);
    let comm = std::fs::read_to_string(format!("{proc}/comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_else(|_| fallback.to_owned());
    let raw = std::fs::read(format!("{proc}/cmdline")).unwrap_or_default();
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // The name it was started by, whole, when the (15-byte) comm agrees:
    // `redis-server` is a link to `redis-check-rdb`, and its comm says so.
    // A process title (`postgres: shop shop 127.0.0.1(5000) idle`) is cut
    // to the name it starts with.
    let argv0 = args
        .first()
        .and_then(|a| a.split([' ', ':']).next())
        .map(|a| a.rsplit('/').next().unwrap_or(a))
        .filter(|a| !comm.is_empty() && a.starts_with(comm.as_str()));
    let exe = argv0
        .map(str::to_owned)
        .or_else(|| executable_file.clone())
        .unwrap_or(comm);
    let cmdline = args.join(" ");
    let program = program_name(&exe, args.get(1..).unwrap_or_default());
    let otel_service_name = std::fs::read(format!("{proc}/environ"))
        .ok()
        .and_then(|env| otel_service_name(&env));
    let cgroup = std::fs::read_to_string(format!("{proc}/cgroup"))
        .map(|text| cgroup_facts(&text))
        .unwrap_or_else(|_| gone_cgroup());
    ProcessFacts {
        exe,
        program,
        executable_file,
        cmdline,
        otel_service_name,
        cgroup,
    }
}

/// What a process runs: for an interpreter, the script (`orders.py` ->
/// `orders`), module (`-m http.server`), jar or main class (`java -jar
/// app.jar` -> `app`, `java pricing.java` -> `pricing`); else the
/// executable's own name.
pub fn program_name(exe: &str, args: &[String]) -> String {
    let interpreter = [
        "python", "node", "nodejs", "java", "ruby", "perl", "php", "bun", "deno",
    ]
    .iter()
    .any(|i| {
        exe.strip_prefix(i)
            .is_some_and(|v| v.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
    });
    if !interpreter {
        return exe.to_owned();
    }
    // Options that take the next argument as their value.
    const VALUED: &[&str] = &[
        "-W",
        "-X",
        "-cp",
        "-classpath",
        "--class-path",
        "-p",
        "--module-path",
        "-r",
        "--require",
        "--import",
        "-I",
    ];
    let stem = |p: &str| {
        let file = p.rsplit('/').next().unwrap_or(p);
        let file = file
            .split_once('.')
            .filter(|(s, ext)| {
                !s.is_empty()
                    && matches!(
                        *ext,
                        "py" | "js" | "mjs" | "cjs" | "java" | "jar" | "rb" | "pl" | "php" | "ts"
                    )
            })
            .map_or(file, |(s, _)| s);
        // A release in the name (`ledger-1.4.2`) is not part of it: the
        // name stays the same from one deploy to the next.
        let file = file
            .match_indices('-')
            .find(|(i, _)| file.as_bytes().get(i + 1).is_some_and(u8::is_ascii_digit))
            .map_or(file, |(i, _)| file.get(..i).unwrap_or(file));
        file.to_owned()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            // Code on the command line (or on stdin): nothing names it but
            // the interpreter, and the code itself may hold a secret.
            "-c" | "-e" | "--eval" | "-p" | "--print" | "-" => return exe.to_owned(),
            // `deno run app.ts`, `bun run app.js`.
            "run" if exe.starts_with("deno") || exe.starts_with("bun") => {}
            "-m" | "-jar" => return it.next().map_or_else(|| exe.to_owned(), |m| stem(m)),
            v if VALUED.contains(&v) => {
                it.next();
            }
            // Short options run together (`-uc CODE`, `-lne CODE`); Java
            // has no code options, and its `-Dconfig=...` would look like one.
            v if !exe.starts_with("java")
                && !v.starts_with("--")
                && v.starts_with('-')
                && v.len() > 2
                && v.contains(['c', 'e']) =>
            {
                return exe.to_owned();
            }

            v if v.starts_with('-') => {}
            // The value of an option not known to take one.
            v if v.bytes().all(|b| b.is_ascii_digit()) => {}
            // A Java main class: its simple name.
            v if exe.starts_with("java") && !v.ends_with(".java") && !v.contains('/') => {
                return v.rsplit('.').next().unwrap_or(v).to_owned();
            }
            v => return stem(v),
        }
    }
    exe.to_owned()
}

/// The service name a process's environment (NUL-separated) gives, if any.
pub fn otel_service_name(environ: &[u8]) -> Option<String> {
    let mut from_attributes = None;
    for var in environ.split(|&b| b == 0) {
        if let Some(v) = var.strip_prefix(b"OTEL_SERVICE_NAME=") {
            let v = String::from_utf8_lossy(v).trim().to_owned();
            if !v.is_empty() {
                return Some(v);
            }
        } else if let Some(v) = var.strip_prefix(b"OTEL_RESOURCE_ATTRIBUTES=") {
            from_attributes = String::from_utf8_lossy(v).split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == "service.name" && !v.trim().is_empty()).then(|| v.trim().to_owned())
            });
        }
    }
    from_attributes
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The unit, container and pod in a `/proc/PID/cgroup` text (v1, v2 or
/// hybrid: every line's path is read).
pub fn cgroup_facts(text: &str) -> CgroupFacts {
    let mut f = CgroupFacts::default();
    for line in text.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            // The innermost service in the path wins.
            if part.ends_with(".service") && !part.starts_with("user@") {
                f.systemd_unit = Some((*part).to_owned());
            }
            if f.container.is_none() {
                let parent = i.checked_sub(1).and_then(|j| parts.get(j).copied());
                f.container = container_in(part, parent);
            }
            if f.pod_uid.is_none() {
                f.pod_uid = pod_uid_in(part);
            }
        }
    }
    if f.container.is_some() {
        // A container's processes are not the runtime's service.
        f.systemd_unit = None;
    }
    f
}

fn container_in(part: &str, parent: Option<&str>) -> Option<Container> {
    let scoped = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, runtime) in [
        ("docker-", "docker"),
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("libpod-", "podman"),
    ] {
        if let Some(id) = scoped.strip_prefix(prefix)
            && is_container_id(id)
        {
            return Some(Container {
                runtime,
                id: id.to_owned(),
            });
        }
    }
    // cgroupfs layouts: /docker/ID, /kubepods/burstable/podUID/ID.
    if is_container_id(part) {
        let runtime = match parent {
            Some("docker") => "docker",
            _ => "unknown",
        };
        return Some(Container {
            runtime,
            id: part.to_owned(),
        });
    }
    None
}

fn pod_uid_in(part: &str) -> Option<String> {
    // systemd: kubepods-burstable-pod1234_5678.slice; cgroupfs: pod1234-5678.
    let slice = part.strip_suffix(".slice").unwrap_or(part);
    let at = slice.rfind("pod")?;
    if !(at == 0 || slice.starts_with("kubepods")) {
        return None;
    }
    let uid = slice[at + 3..].replace('_', "-");
    (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

/// The cgroup v2 directory under `root` whose inode is `id`, if any.
fn cgroup_dir_of(root: &std::path::Path, id: u64) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let mut todo = vec![(root.to_path_buf(), 0)];
    let mut seen = 0usize;
    while let Some((dir, depth)) = todo.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_dir() {
                continue;
            }
            if meta.ino() == id {
                return Some(entry.path());
            }
            seen += 1;
            // Bounded: a pathological tree costs a bounded walk, not a stall.
            if depth < 16 && seen < 100_000 {
                todo.push((entry.path(), depth + 1));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*shop.py gateway*", "python3 -u shop.py gateway"));
        assert!(glob("nginx", "nginx"));
        assert!(!glob("nginx", "nginx2"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("*", ""));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn cgroup_paths_of_units_runtimes_and_pods() {
        let id = "4f1d0c7d6f2a9e7b3c5d8e1f0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b";
        let f = cgroup_facts("0::/system.slice/nginx.service\n");
        assert_eq!(f.systemd_unit.as_deref(), Some("nginx.service"));
        let f = cgroup_facts(
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/api.service\n",
        );
        assert_eq!(f.systemd_unit.as_deref(), Some("api.service"));
        let f = cgroup_facts(&format!("0::/system.slice/docker-{id}.scope\n"));
        assert_eq!(f.container.as_ref().map(|c| c.runtime), Some("docker"));
        assert_eq!(f.systemd_unit, None);
        let f = cgroup_facts(&format!("12:memory:/docker/{id}\n0::/\n"));
        assert_eq!(f.container.as_ref().map(|c| c.runtime), Some("docker"));
        let f = cgroup_facts(&format!(
            "0::/kubepods.slice/kubepods-burstable.slice/\
             kubepods-burstable-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice/cri-containerd-{id}.scope\n"
        ));
        assert_eq!(
            f.pod_uid.as_deref(),
            Some("0a1b2c3d-4e5f-6789-abcd-ef0123456789")
        );
        assert_eq!(
            f.container,
            Some(Container {
                runtime: "containerd",
                id: id.into()
            })
        );
        let f = cgroup_facts(&format!(
            "0::/kubepods/besteffort/pod0a1b2c3d-4e5f-6789-abcd-ef0123456789/{id}\n"
        ));
        assert!(f.pod_uid.is_some() && f.container.is_some());
        let f = cgroup_facts(&format!("0::/machine.slice/libpod-{id}.scope/container\n"));
        assert_eq!(f.container.map(|c| c.runtime), Some("podman"));
        assert_eq!(
            cgroup_facts("0::/system.slice/podcast.service\n").pod_uid,
            None
        );
        assert_eq!(cgroup_facts("garbage\n\n::\n"), CgroupFacts::default());
    }

    #[test]
    fn otel_environment() {
        assert_eq!(
            otel_service_name(b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0"),
            Some("checkout".into())
        );
        assert_eq!(
            otel_service_name(b"OTEL_RESOURCE_ATTRIBUTES=team=a,service.name=cart\0"),
            Some("cart".into())
        );
        assert_eq!(otel_service_name(b"OTEL_SERVICE_NAME=\0SECRET=x\0"), None);
    }

    #[test]
    fn precedence() {
        let mut p = ProcessFacts {
            exe: "python3".into(),
            cmdline: "python3 shop.py gateway".into(),
            ..ProcessFacts::default()
        };
        assert_eq!(name(&[], &p, None).service, "python3");
        p.cgroup.systemd_unit = Some("getty@tty1.service".into());
        assert_eq!(name(&[], &p, None).service, "getty");
        p.otel_service_name = Some("gw".into());
        assert_eq!(name(&[], &p, None).source, NameSource::OtelEnv);
        let rule = NamingRule {
            name: "gateway".into(),
            exe: Some("python*".into()),
            cmdline: Some("*gateway".into()),
            systemd_unit: None,
            container_id: None,
            k8s_namespace: None,
            k8s_pod: None,
            k8s_workload: None,
        };
        let id = name(std::slice::from_ref(&rule), &p, None);
        assert_eq!(
            (id.service.as_str(), id.source),
            ("gateway", NameSource::Rule)
        );
        let attrs = id.resource_attributes();
        assert!(!format!("{attrs:?}").contains("shop.py"), "no command line");
        // A rule on a Kubernetes field never matches a process outside one.
        let k8s_rule = NamingRule {
            k8s_namespace: Some("*".into()),
            ..rule
        };
        assert_eq!(name(&[k8s_rule], &p, None).source, NameSource::OtelEnv);
    }

    #[test]
    fn programs_are_named_by_what_they_run() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            program_name("python3.11", &args(&["-u", "/srv/shop/orders.py", "x"])),
            "orders"
        );
        assert_eq!(
            program_name("python3", &args(&["-m", "http.server", "80"])),
            "http.server"
        );
        assert_eq!(
            program_name("python3", &args(&["-c", "print(1)"])),
            "python3"
        );
        assert_eq!(
            program_name("node", &args(&["--require", "x", "inventory.js"])),
            "inventory"
        );
        assert_eq!(program_name("java", &args(&["pricing.java"])), "pricing");
        assert_eq!(
            program_name("java", &args(&["-Xmx1g", "-jar", "/app/ledger.jar"])),
            "ledger"
        );
        assert_eq!(
            program_name("java", &args(&["-cp", "a.jar", "com.shop.Fraud"])),
            "Fraud"
        );
        assert_eq!(
            program_name("tangle-collector", &args(&["--http", "x"])),
            "tangle-collector"
        );
        assert_eq!(program_name("nodejs", &[]), "nodejs");
        // Code on the command line is never a name: it may hold a secret.
        assert_eq!(
            program_name("python3", &args(&["-uc", "pw='x'"])),
            "python3"
        );
        assert_eq!(program_name("perl", &args(&["-lne", "print"])), "perl");
        assert_eq!(program_name("python3", &args(&["-", "SECRET"])), "python3");
        assert_eq!(
            program_name("java", &args(&["-jar", "app-1.2.3.jar"])),
            "app"
        );
        assert_eq!(program_name("deno", &args(&["run", "server.ts"])), "server");
        assert_eq!(
            program_name(
                "node",
                &args(&["--max-http-header-size", "16384", "app.js"])
            ),
            "app"
        );
        // Not an interpreter, though its name starts like one.
        assert_eq!(
            program_name("python-ish-server", &args(&["a.py"])),
            "python-ish-server"
        );
    }
}
