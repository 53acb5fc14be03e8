//! Kubernetes pods by namespace and name (or a name prefix, for the pods
//! a DaemonSet or a Deployment makes under generated names), as the node
//! can tell without API credentials: the kubelet keeps a log directory per
//! pod, `/var/log/pods/<namespace>_<name>_<uid>/`, created before the
//! pod's containers start. A pod's uid names its cgroup.
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

/// A namespace is a DNS label: lowercase letters, digits and `-`, starting
/// and ending with a letter or digit, 63 bytes at most.
fn is_namespace(s: &str) -> bool {
    is_dns(s, 63, false)
}

/// A pod name is a DNS subdomain: the same, with `.`, 253 bytes at most.
fn is_pod_name(s: &str) -> bool {
    is_dns(s, 253, true)
}

fn is_dns(s: &str, max: usize, dots: bool) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars().all(|c| dns_char(c, dots))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn dns_char(c: char, dots: bool) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.')
}

fn not_a_namespace(text: &str, namespace: &str) -> String {
    format!(
        "{text:?}: {namespace:?} is not a namespace name (lowercase letters, digits and -, 63 at \
         most)"
    )
}

impl PodName {
    /// Parses `namespace/name`, each as Kubernetes allows it (a namespace
    /// is a DNS label, a pod name a DNS subdomain).
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some((namespace, name)) = text.split_once('/') else {
            return Err(format!(
                "{text:?} is not namespace/name (such as kube-system/aws-node-7xk2p, or \
                 kube-system/aws-node-* for every pod whose name starts with aws-node-)"
            ));
        };
        if !is_namespace(namespace) {
            return Err(not_a_namespace(text, namespace));
        }
        if !is_pod_name(name) {
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

/// A `pods` entry: one pod by its exact name (`kube-system/aws-node-7xk2p`),
/// or the pods of one namespace whose names start with a prefix
/// (`kube-system/aws-node-*`): a workload whose pods are made again under
/// new generated names (a DaemonSet's, a Deployment's). The namespace is
/// always exact, so a pattern never reaches past it; `namespace/*` is every
/// pod of the namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRule {
    pub namespace: String,
    pub name: NameMatch,
}

/// How a [`PodRule`] matches a pod's name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NameMatch {
    /// This name only.
    Exact(String),
    /// Every name starting with this (possibly empty) prefix: written
    /// `prefix*`.
    Prefix(String),
}

impl fmt::Display for PodRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            NameMatch::Exact(name) => write!(f, "{}/{name}", self.namespace),
            NameMatch::Prefix(prefix) => write!(f, "{}/{prefix}*", self.namespace),
        }
    }
}

impl PodRule {
    /// Parses `namespace/name` or `namespace/prefix*`: one `*`, as the last
    /// character of the name, never in the namespace.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some((namespace, name)) = text.split_once('/') else {
            return PodName::parse(text).map(Self::exact);
        };
        if namespace.contains('*') {
            return Err(format!(
                "{text:?}: a pod pattern names its namespace exactly ({namespace:?} has a *): \
                 the namespace is who may create the pods a rule allows, so a rule cannot reach \
                 across namespaces; write one entry per namespace"
            ));
        }
        let Some(prefix) = name.strip_suffix('*') else {
            if name.contains('*') {
                return Err(format!(
                    "{text:?}: a * in a pod pattern stands only at the end of the name \
                     (kube-system/aws-node-*: every pod whose name starts with aws-node-)"
                ));
            }
            return PodName::parse(text).map(Self::exact);
        };
        if prefix.contains('*') {
            return Err(format!(
                "{text:?}: a pod pattern has one *, at the end of the name \
                 (kube-system/aws-node-*)"
            ));
        }
        if !is_namespace(namespace) {
            return Err(not_a_namespace(text, namespace));
        }
        let prefix_ok = prefix.len() < 253
            && prefix.chars().all(|c| dns_char(c, true))
            && (prefix.is_empty() || prefix.starts_with(|c: char| c.is_ascii_alphanumeric()));
        if !prefix_ok {
            return Err(format!(
                "{text:?}: {prefix:?} cannot start a pod name (lowercase letters, digits, - \
                 and ., starting with a letter or digit, 252 at most before the *)"
            ));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: NameMatch::Prefix(prefix.to_owned()),
        })
    }

    fn exact(pod: PodName) -> Self {
        Self {
            namespace: pod.namespace,
            name: NameMatch::Exact(pod.name),
        }
    }

    /// Whether `pod` is one this rule names: the same namespace, and the
    /// same name or one that starts with the prefix.
    pub fn matches(&self, pod: &PodName) -> bool {
        pod.namespace == self.namespace
            && match &self.name {
                NameMatch::Exact(name) => pod.name == *name,
                NameMatch::Prefix(prefix) => pod.name.starts_with(prefix.as_str()),
            }
    }

    /// Whether it names every pod of its namespace (`namespace/*`).
    pub fn whole_namespace(&self) -> bool {
        self.name == NameMatch::Prefix(String::new())
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

    fn pod(text: &str) -> PodName {
        PodName::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn rule(text: &str) -> PodRule {
        PodRule::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_pattern_matches_generated_names_in_its_own_namespace_only() {
        let ds = rule("kube-system/aws-node-*");
        assert_eq!(ds.to_string(), "kube-system/aws-node-*");
        assert!(!ds.whole_namespace());
        for name in [
            "kube-system/aws-node-7xk2p",
            "kube-system/aws-node-x2k4p",
            "kube-system/aws-node-termination-handler-5d8f7c9b6-abcde",
        ] {
            assert!(ds.matches(&pod(name)), "{name}");
        }
        for name in [
            // The same name in another namespace: never.
            "default/aws-node-7xk2p",
            "kube-systemx/aws-node-7xk2p",
            "kube/aws-node-7xk2p",
            // The prefix without its -, and other names.
            "kube-system/aws-node",
            "kube-system/aws-nodes-7xk2p",
            "kube-system/coredns-5d8f7c9b6-abcde",
        ] {
            assert!(!ds.matches(&pod(name)), "{name}");
        }
        let deployment = rule("web/web-5d8f7c9b6-*");
        assert!(deployment.matches(&pod("web/web-5d8f7c9b6-abcde")));
        assert!(!deployment.matches(&pod("web/web-7c9b65d8f-abcde")));
        // Without the -, the name itself too.
        let bare = rule("ns/agent*");
        assert!(bare.matches(&pod("ns/agent")));
        assert!(bare.matches(&pod("ns/agent-0")));
        assert!(bare.matches(&pod("ns/agents")));
        // A whole namespace, and nothing outside it.
        let all = rule("monitoring/*");
        assert!(all.whole_namespace());
        assert!(all.matches(&pod("monitoring/anything-0")));
        assert!(!all.matches(&pod("monitoring-2/anything-0")));
        // An exact name is that pod alone.
        let exact = rule("kube-system/aws-node-7xk2p");
        assert!(exact.matches(&pod("kube-system/aws-node-7xk2p")));
        assert!(!exact.matches(&pod("kube-system/aws-node-7xk2pq")));
        assert!(!exact.matches(&pod("kube-system/aws-node-x2k4p")));
    }

    #[test]
    fn malformed_patterns_are_refused_saying_where_the_star_may_go() {
        for (text, why) in [
            ("kube-system/aws-*-node", "only at the end of the name"),
            ("kube-system/*-node", "only at the end of the name"),
            ("kube-system/aws-node-**", "one *, at the end"),
            ("kube-*/aws-node-*", "names its namespace exactly"),
            ("*/aws-node-*", "names its namespace exactly"),
            ("*/aws-node", "names its namespace exactly"),
            ("kube_system/aws-node-*", "not a namespace name"),
            ("/aws-node-*", "not a namespace name"),
            ("kube-system/-node-*", "cannot start a pod name"),
            ("kube-system/Aws-*", "cannot start a pod name"),
            ("kube-system/aws_node-*", "cannot start a pod name"),
            ("kube-system/a/b*", "cannot start a pod name"),
            ("aws-node-*", "not namespace/name"),
        ] {
            let e = PodRule::parse(text).expect_err(text);
            assert!(e.contains(why), "{text}: {e}");
            assert!(e.contains(&format!("{text:?}")), "{text}: {e}");
        }
        let long = format!("ns/{}*", "a".repeat(253));
        assert!(
            PodRule::parse(&long)
                .expect_err("too long")
                .contains("252 at most")
        );
        assert!(PodRule::parse(&format!("ns/{}*", "a".repeat(252))).is_ok());
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
