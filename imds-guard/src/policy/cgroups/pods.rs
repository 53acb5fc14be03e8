//! Kubernetes pods by namespace and name, as the node can tell without API
//! credentials: the kubelet keeps a log directory per pod,
//! `/var/log/pods/<namespace>_<name>_<uid>/`, created before the pod's
//! containers start. A pod's uid names its cgroup.
//!
//! A pod is allowed only (never denied): its uid, hence its cgroup, is
//! known only once the kubelet has made the cgroup, so a rule that waits
//! for it can only be late. Late is a refusal for an allow, and would be
//! a way through for a deny.

use std::{collections::BTreeMap, fmt, io, path::Path};

use super::pattern::{Component, Pattern};

/// The kubelet's pod log directory.
pub const DEFAULT_PODS_DIR: &str = "/var/log/pods";

/// Cgroup patterns per pod uid (see [`patterns`]).
pub const PATTERNS_PER_POD: usize = 4;

/// `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl PodName {
    /// Parses `namespace/name`, each as Kubernetes allows it (a namespace
    /// is a DNS label, a pod name a DNS subdomain).
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some((namespace, name)) = text.split_once('/') else {
            return Err(format!(
                "{text:?} is not namespace/name (such as kube-system/aws-node)"
            ));
        };
        let dns = |s: &str, max: usize, dots: bool| {
            let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
            !s.is_empty()
                && s.len() <= max
                && s.chars().all(|c| ok(c) || (dots && c == '.'))
                && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        };
        if !dns(namespace, 63, false) {
            return Err(format!(
                "{text:?}: {namespace:?} is not a namespace name (lowercase letters, digits and -, \
                 63 at most)"
            ));
        }
        if !dns(name, 253, true) {
            return Err(format!(
                "{text:?}: {name:?} is not a pod name (lowercase letters, digits, - and ., 253 at \
                 most)"
            ));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// The pods a kubelet log directory lists: uids by pod.
pub type Pods = BTreeMap<PodName, Vec<String>>;

/// The pod a log directory entry is for, and its uid. Namespaces and pod
/// names cannot hold `_`, so the name splits in three; a uid is a UUID (or,
/// for a static pod, a hash), and anything else is not the kubelet's.
pub fn parse_entry(entry: &str) -> Option<(PodName, String)> {
    let mut parts = entry.split('_');
    let (namespace, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let uid_ok = !uid.is_empty()
        && uid.len() <= 64
        && uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let pod = PodName::parse(&format!("{namespace}/{name}")).ok()?;
    uid_ok.then(|| (pod, uid.to_owned()))
}

/// Lists the pods of the kubelet's log directory `dir`; none when it does
/// not exist (no kubelet, or not yet).
pub fn list(dir: &Path) -> io::Result<Pods> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Pods::new()),
        Err(e) => return Err(e),
    };
    let mut pods = Pods::new();
    for entry in entries {
        let entry = entry?;
        let Some((pod, uid)) = entry.file_name().to_str().and_then(parse_entry) else {
            continue;
        };
        pods.entry(pod).or_default().push(uid);
    }
    for uids in pods.values_mut() {
        uids.sort();
    }
    Ok(pods)
}

/// The cgroups of the pod with `uid`, and all below them, under the
/// kubelet's default cgroup root: with the systemd driver
/// `/kubepods.slice/kubepods-pod<uid>.slice` (Guaranteed) or
/// `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice`,
/// with `-` in the uid written `_`; with the cgroupfs driver
/// `/kubepods/pod<uid>` or `/kubepods/<qos>/pod<uid>`.
pub fn patterns(uid: &str) -> [Pattern; PATTERNS_PER_POD] {
    let lit = |s: &str| Component::Literal(s.as_bytes().to_vec());
    let glob = |prefix: &str, suffix: &str| Component::Glob {
        prefix: prefix.as_bytes().to_vec(),
        suffix: suffix.as_bytes().to_vec(),
    };
    let escaped = uid.replace('-', "_");
    let subtree = |components| Pattern {
        components,
        subtree: true,
    };
    [
        subtree(vec![
            lit("kubepods.slice"),
            lit(&format!("kubepods-pod{escaped}.slice")),
        ]),
        subtree(vec![
            lit("kubepods.slice"),
            glob("kubepods-", ".slice"),
            glob("kubepods-", &format!("-pod{escaped}.slice")),
        ]),
        subtree(vec![lit("kubepods"), lit(&format!("pod{uid}"))]),
        subtree(vec![
            lit("kubepods"),
            glob("", ""),
            lit(&format!("pod{uid}")),
        ]),
    ]
}

/// The pod whose cgroup `path` is in, when it is one of `pods`: for
/// naming a caller in a record.
pub fn pod_of<'p>(path: &[u8], pods: &'p Pods) -> Option<&'p PodName> {
    let parts = super::pattern::components(path);
    pods.iter().find_map(|(pod, uids)| {
        uids.iter()
            .any(|uid| patterns(uid).iter().any(|p| p.matches(&parts)))
            .then_some(pod)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::cgroups::test_dir::TempDir;

    const UID: &str = "3f8a55c2-7b1e-4b8e-9d2a-0c1d2e3f4a5b";

    fn matches(uid: &str, path: &str) -> bool {
        let parts = super::super::pattern::components(path.as_bytes());
        patterns(uid).iter().any(|p| p.matches(&parts))
    }

    #[test]
    fn names_parse_as_kubernetes_allows_them() {
        let pod = PodName::parse("kube-system/aws-node-x2k4p").expect("valid");
        assert_eq!(pod.to_string(), "kube-system/aws-node-x2k4p");
        assert!(
            PodName::parse("aws-node")
                .expect_err("no ns")
                .contains("namespace/name")
        );
        assert!(
            PodName::parse("Kube/x")
                .expect_err("upper")
                .contains("not a namespace")
        );
        assert!(
            PodName::parse("ns/a_b")
                .expect_err("underscore")
                .contains("not a pod name")
        );
        assert!(
            PodName::parse("ns/")
                .expect_err("empty")
                .contains("not a pod name")
        );
    }

    #[test]
    fn log_directories_name_the_pod_and_its_uid() {
        assert_eq!(
            parse_entry(&format!("monitoring_agent-0_{UID}")),
            Some((
                PodName::parse("monitoring/agent-0").expect("valid"),
                UID.to_owned()
            ))
        );
        assert_eq!(parse_entry("monitoring_agent-0"), None);
        assert_eq!(parse_entry("a_b_c_d"), None);
        assert_eq!(parse_entry("ns_pod_uid*"), None);
    }

    #[test]
    fn a_pod_is_matched_under_both_drivers_and_every_qos_class() {
        let u = UID.replace('-', "_");
        for path in [
            format!("/kubepods.slice/kubepods-pod{u}.slice"),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"),
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/\
                 cri-containerd-0123.scope"
            ),
            format!("/kubepods/pod{UID}"),
            format!("/kubepods/burstable/pod{UID}/0123abc"),
        ] {
            assert!(matches(UID, &path), "{path}");
        }
        let other = "11111111-2222-3333-4444-555555555555";
        for path in [
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}x.slice"),
            format!("/kubepods/burstable/pod{other}"),
            format!("/system.slice/kubepods-pod{u}.slice"),
            "/kubepods.slice".to_owned(),
        ] {
            assert!(!matches(UID, &path), "{path}");
        }
    }

    #[test]
    fn the_log_directory_is_listed_and_a_missing_one_is_empty() {
        let dir = TempDir::new();
        for entry in [
            format!("ns_web-0_{UID}"),
            "ns_web-0_0011".to_owned(),
            "not-a-pod".to_owned(),
        ] {
            std::fs::create_dir(dir.path().join(entry)).expect("mkdir");
        }
        let pods = list(dir.path()).expect("lists");
        let web = PodName::parse("ns/web-0").expect("valid");
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[&web], ["0011".to_owned(), UID.to_owned()]);
        assert!(
            list(&dir.path().join("absent"))
                .expect("absent is empty")
                .is_empty()
        );
        let path = format!("/kubepods/pod{UID}/c1");
        assert_eq!(pod_of(path.as_bytes(), &pods), Some(&web));
        assert_eq!(pod_of(b"/kubepods/podffff", &pods), None);
    }
}
