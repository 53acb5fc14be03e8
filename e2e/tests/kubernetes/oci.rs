//! The DaemonSet's pod as an OCI runtime bundle, for runc: the image of
//! `cargo xtask image` unpacked from its OCI archive, and a `config.json`
//! made from runc's own default (`runc spec`) and the pod template's
//! fields, each mapped as a Kubernetes runtime (containerd's CRI) maps it.
//! A field of the template this mapping does not know panics, naming it:
//! the manifest cannot grow a setting the test silently leaves out.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Value, json};

/// What the image's configuration says to run.
#[derive(Debug)]
pub struct Image {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn read_json(path: &Path) -> Value {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tar(args: &[&str], archive: &Path, into: &Path) {
    let out = Command::new("tar")
        .args(args)
        .arg(archive)
        .arg("-C")
        .arg(into)
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "tar {args:?} {}: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unpacks the OCI archive `archive` (an image layout in a tar, as `podman
/// save --format oci-archive` writes) into `rootfs`, layer by layer, using
/// `scratch` for the layout.
pub fn unpack(archive: &Path, scratch: &Path, rootfs: &Path) -> Image {
    fs::create_dir_all(scratch).expect("the layout's directory");
    fs::create_dir_all(rootfs).expect("the root's directory");
    tar(&["-xf"], archive, scratch);
    let blob = |digest: &Value| {
        let digest = digest.as_str().expect("a digest");
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        scratch.join("blobs/sha256").join(hex)
    };
    let index = read_json(&scratch.join("index.json"));
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "one image in the archive: {index}");
    let manifest = read_json(&blob(&manifests[0]["digest"]));
    for layer in manifest["layers"].as_array().expect("layers") {
        let flags = match layer["mediaType"].as_str() {
            Some("application/vnd.oci.image.layer.v1.tar+gzip") => "-xzf",
            Some("application/vnd.oci.image.layer.v1.tar") => "-xf",
            other => panic!("a layer of type {other:?}"),
        };
        tar(&[flags], &blob(&layer["digest"]), rootfs);
    }
    let config = read_json(&blob(&manifest["config"]["digest"]));
    let c = &config["config"];
    Image {
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"]),
    }
}

/// What the node has where the pod's volumes point.
pub struct Node {
    /// A hostPath volume's path on the node, where the test stands in for
    /// it (the node's bpffs with a private one of the test's); others are
    /// the machine's own.
    pub host_paths: BTreeMap<&'static str, PathBuf>,
    /// ConfigMaps by name: their data.
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Where the test writes a ConfigMap volume's files.
    pub volumes: PathBuf,
}

impl Node {
    fn host_path(&self, path: &str) -> PathBuf {
        self.host_paths
            .get(path)
            .cloned()
            .unwrap_or_else(|| PathBuf::from(path))
    }
}

/// Runtime-specific parts of the configuration.
pub struct Runtime<'a> {
    /// `runc spec`'s default configuration.
    pub default: Value,
    /// The container's cgroup, relative to the cgroup2 root.
    pub cgroups_path: &'a str,
    /// The capabilities the runtime holds (its bounding set): a runtime
    /// cannot give more, and podman and containerd leave the others out
    /// (root on the development machine lacks CAP_SYS_RESOURCE).
    pub bounding: u64,
    /// Whether the container gets a cgroup namespace of its own:
    /// containerd's CRI gives one on a cgroup v2 host only (a hybrid or v1
    /// host keeps the node's).
    pub cgroupns: bool,
}

/// The number of a capability the manifest may name (capability(7)).
pub fn cap_number(name: &str) -> u32 {
    match name {
        "NET_ADMIN" => 12,
        "NET_RAW" => 13,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("the capability {other} has no number here"),
    }
}

/// The capabilities added, as a mask.
pub fn cap_mask(add: &Value) -> u64 {
    strings(add)
        .iter()
        .fold(0, |m, c| m | 1 << cap_number(c.trim_start_matches("CAP_")))
}

/// The capabilities in `add` the runtime holds, by their kernel names.
fn cap_names(add: &Value, bounding: u64) -> Vec<String> {
    strings(add)
        .into_iter()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .filter(|c| bounding & 1 << cap_number(c) != 0)
        .map(|c| format!("CAP_{c}"))
        .collect()
}

/// Fails on a key of `object` (`what`: the pod, the container, ...) that
/// is not in `known`: a manifest field the configuration does not map
/// fails the test rather than being left out.
fn only_known(object: &Value, known: &[&str], what: &str) {
    let keys = object
        .as_object()
        .unwrap_or_else(|| panic!("the {what} is not a mapping"))
        .keys();
    for key in keys {
        assert!(
            known.contains(&key.as_str()),
            "the {what}'s `{key}` is not mapped to runc's configuration"
        );
    }
}

/// `config.json` for the one container of the pod template `pod` (its
/// `spec`).
pub fn config(pod: &Value, image: &Image, node: &Node, runtime: &Runtime) -> Value {
    let known_pod = [
        "hostNetwork",
        "hostPID",
        "dnsPolicy",
        "priorityClassName",
        "automountServiceAccountToken",
        "terminationGracePeriodSeconds",
        "nodeSelector",
        "tolerations",
        "containers",
        "volumes",
    ];
    only_known(pod, &known_pod, "pod");
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    let c = &containers[0];
    let known_container = [
        "name",
        "image",
        "imagePullPolicy",
        "args",
        "envFrom",
        "securityContext",
        "resources",
        "volumeMounts",
    ];
    only_known(c, &known_container, "container");
    let mut spec = runtime.default.clone();

    // Namespaces: the runtime gives a pod its own; hostNetwork and hostPID
    // share the node's (hostNetwork the node's UTS too), and on cgroup v2
    // every container has a cgroup namespace of its own (containerd's
    // default there; runc's default has none).
    let mut drop_ns = Vec::new();
    if pod["hostNetwork"] == true {
        drop_ns.extend(["network", "uts"]);
    }
    if pod["hostPID"] == true {
        drop_ns.push("pid");
    }
    let ns = spec["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces");
    ns.retain(|n| !drop_ns.contains(&n["type"].as_str().unwrap_or("")) && n["type"] != "cgroup");
    if runtime.cgroupns {
        ns.push(json!({"type": "cgroup"}));
    }
    if pod["hostNetwork"] == true {
        spec.as_object_mut().expect("spec").remove("hostname");
    }

    // The process: the image's entry point with the container's args (they
    // replace the image's Cmd), the image's environment and envFrom.
    let args = match c.get("args") {
        Some(a) => strings(a),
        None => image.cmd.clone(),
    };
    let mut argv = image.entrypoint.clone();
    argv.extend(args);
    let mut env = if image.env.is_empty() {
        strings(&spec["process"]["env"])
            .into_iter()
            .filter(|e| e.starts_with("PATH="))
            .collect()
    } else {
        image.env.clone()
    };
    for from in c["envFrom"].as_array().into_iter().flatten() {
        let r = &from["configMapRef"];
        let name = r["name"].as_str().expect("a configMapRef's name");
        match node.config_maps.get(name) {
            Some(data) => env.extend(data.iter().map(|(k, v)| format!("{k}={v}"))),
            None => assert!(
                r["optional"] == true,
                "the ConfigMap {name} is missing and not optional"
            ),
        }
    }
    let sc = &c["securityContext"];
    let known_sc = [
        "privileged",
        "runAsUser",
        "runAsGroup",
        "readOnlyRootFilesystem",
        "seccompProfile",
        "capabilities",
    ];
    only_known(sc, &known_sc, "securityContext");
    assert_eq!(
        sc["privileged"], false,
        "a privileged container is not what this maps"
    );
    let caps = &sc["capabilities"];
    assert_eq!(
        caps["drop"],
        json!(["ALL"]),
        "the capabilities are the list added to none"
    );
    let added = cap_names(&caps["add"], runtime.bounding);
    assert!(!added.is_empty(), "no capability added");
    // containerd: bounding, effective and permitted are the container's
    // set; inheritable and ambient stay empty (CVE-2022-24769).
    let process = json!({
        "terminal": false,
        "user": {
            "uid": sc["runAsUser"].as_u64().unwrap_or(0),
            "gid": sc["runAsGroup"].as_u64().unwrap_or(0),
        },
        "args": argv,
        "env": env,
        "cwd": "/",
        "capabilities": {
            "bounding": added,
            "effective": added,
            "permitted": added,
        },
        "rlimits": spec["process"]["rlimits"].clone(),
        // allowPrivilegeEscalation unset: true, so no_new_privs is not set.
        "noNewPrivileges": false,
    });
    spec["process"] = process;
    spec["root"] = json!({
        "path": "rootfs",
        "readonly": sc["readOnlyRootFilesystem"] == true,
    });
    // seccompProfile Unconfined: no filter (runc's default has none).
    assert_eq!(sc["seccompProfile"]["type"], "Unconfined");
    spec["linux"]
        .as_object_mut()
        .expect("linux")
        .remove("seccomp");
    spec["linux"]["cgroupsPath"] = json!(runtime.cgroups_path);

    // Volumes: each volumeMount of the container, replacing the runtime's
    // default mount at the same place (as containerd does: the default
    // cgroup mount at /sys/fs/cgroup gives way to the hostPath).
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| (v["name"].as_str().expect("a volume's name"), v))
        .collect();
    let mut mounts = Vec::new();
    for m in c["volumeMounts"].as_array().expect("volumeMounts") {
        let name = m["name"].as_str().expect("a volumeMount's name");
        let dest = m["mountPath"].as_str().expect("a mountPath").to_owned();
        let v = volumes
            .get(name)
            .unwrap_or_else(|| panic!("no volume {name}"));
        let mut options = Vec::new();
        let mount = if let Some(h) = v.get("hostPath") {
            let path = h["path"].as_str().expect("a hostPath's path");
            let source = node.host_path(path);
            match h["type"].as_str() {
                Some("DirectoryOrCreate") => {
                    fs::create_dir_all(&source).expect("DirectoryOrCreate");
                }
                Some("Directory") => assert!(source.is_dir(), "{}", source.display()),
                Some("File") => assert!(source.is_file(), "{}", source.display()),
                other => panic!("a hostPath of type {other:?}"),
            }
            options.push("rbind");
            json!({"destination": dest, "type": "bind", "source": source})
        } else if let Some(cm) = v.get("configMap") {
            let map = cm["name"].as_str().expect("a configMap's name");
            let data = node
                .config_maps
                .get(map)
                .unwrap_or_else(|| panic!("no ConfigMap {map}"));
            assert_eq!(
                data.keys().collect::<Vec<_>>(),
                ["policy.toml"],
                "the kubelet's layout is written for one key"
            );
            // Written once, in the kubelet's layout; every container of
            // the test mounts the same volume.
            let dir = node.volumes.join(name);
            if !dir.join("..data").exists() {
                fs::create_dir_all(&dir).expect("a ConfigMap's volume");
                imds_guard_e2e::configmap_write(
                    &dir,
                    "2026_01_01_00_00_00.1",
                    &data["policy.toml"],
                );
            }
            options.push("rbind");
            json!({"destination": dest, "type": "bind", "source": dir})
        } else if let Some(e) = v.get("emptyDir") {
            assert_eq!(e["medium"], "Memory", "an emptyDir on disk");
            let size = e["sizeLimit"].as_str().map(|s| {
                let mib: u64 = s
                    .strip_suffix("Mi")
                    .and_then(|n| n.parse().ok())
                    .expect("sizeLimit in Mi");
                format!("size={}", mib << 20)
            });
            let mut o = vec!["nosuid".to_owned(), "nodev".to_owned()];
            o.extend(size);
            json!({"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": o})
        } else {
            panic!("the volume {name} is of a kind not mapped: {v}");
        };
        let mut mount = mount;
        if m["readOnly"] == true {
            options.push("ro");
        }
        match m["mountPropagation"].as_str() {
            None | Some("None") => options.push("rprivate"),
            Some("HostToContainer") => options.push("rslave"),
            Some(other) => panic!("mountPropagation {other}"),
        }
        if mount["type"] == "bind" {
            mount["options"] = json!(options);
        }
        mounts.push(mount);
    }
    let dests: Vec<Value> = mounts.iter().map(|m| m["destination"].clone()).collect();
    let mut all: Vec<Value> = spec["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter(|m| !dests.contains(&m["destination"]))
        .cloned()
        .collect();
    all.extend(mounts);
    spec["mounts"] = json!(all);
    spec
}
