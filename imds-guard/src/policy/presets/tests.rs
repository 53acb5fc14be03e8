use std::{fs, net::IpAddr};

use super::*;
use crate::policy::Protocol;

fn presets() -> Vec<Preset> {
    all().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_preset_parses_and_the_issues_clouds_are_there() {
    let names: Vec<String> = presets().into_iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        [
            "aws-ec2",
            "aws-ecs",
            "aws-eks-pod-identity",
            "azure",
            "gcp",
            "oci",
            "alibaba",
            "openstack",
            "scaleway"
        ]
    );
}

#[test]
fn every_address_is_unicast_and_no_preset_protects_its_neighbours() {
    for p in presets() {
        for &(addr, _) in p.addresses.iter().chain(&p.neighbours) {
            // `parse_endpoint` refuses the unspecified, multicast and
            // broadcast addresses; these are not a service either.
            assert!(!addr.is_loopback(), "{}: {addr}", p.name);
            if let IpAddr::V6(v6) = addr {
                assert!(v6.to_ipv4_mapped().is_none(), "{}: {addr}", p.name);
            }
        }
        for &(addr, port) in &p.neighbours {
            let (number, protocol) =
                port.map_or((None, Protocol::Both), |p| (Some(p.number), p.protocol));
            for &(a, protected) in &p.addresses {
                let clash = a == addr
                    && match (protected, number) {
                        (None, _) | (_, None) => true,
                        (Some(q), Some(n)) => {
                            q.number == n
                                && (q.protocol.covers(protocol) || protocol.covers(q.protocol))
                        }
                    };
                assert!(!clash, "{} protects its neighbour {addr} {port:?}", p.name);
            }
        }
    }
}

#[test]
fn host_presets_are_recognised_by_dmi_and_workload_presets_by_their_host() {
    for p in presets() {
        match p.kind {
            Kind::Host => {
                assert!(!p.dmi.is_empty(), "{}", p.name);
                assert!(p.with.is_none() && p.shows.is_empty(), "{}", p.name);
            }
            Kind::Workload => {
                assert!(p.dmi.is_empty(), "{}", p.name);
                assert_eq!(p.with.as_deref(), Some(p.cloud.as_str()), "{}", p.name);
                assert!(!p.shows.is_empty(), "{}", p.name);
            }
        }
    }
}

#[test]
fn no_two_clouds_dmi_rules_match_one_machine() {
    let presets = presets();
    for a in &presets {
        for b in presets.iter().filter(|b| b.cloud != a.cloud) {
            for ra in &a.dmi {
                for rb in &b.dmi {
                    assert!(
                        !overlap(ra, rb),
                        "{} {ra:?} and {} {rb:?} can match one machine",
                        a.name,
                        b.name
                    );
                }
            }
        }
    }
    // The check itself: rules that share no file overlap; a suffix
    // pattern overlaps the value it ends.
    let rule = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(f, v)| ((*f).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert!(overlap(
        &rule(&[("sys_vendor", "A")]),
        &rule(&[("product_name", "B")])
    ));
    assert!(overlap(
        &rule(&[("bios_version", "*amazon")]),
        &rule(&[("bios_version", "4.2.amazon")])
    ));
    assert!(!overlap(
        &rule(&[("sys_vendor", "A")]),
        &rule(&[("sys_vendor", "B")])
    ));
}

/// A DMI directory with `files`, removed when dropped.
struct FakeDmi(PathBuf);

impl FakeDmi {
    fn new(name: &str, files: &[(&str, &str)]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("imds-guard-dmi-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for (file, value) in files {
            // As the kernel shows them: one line.
            fs::write(dir.join(file), format!("{value}\n")).unwrap_or_else(|e| panic!("{e}"));
        }
        Self(dir)
    }
}

impl Drop for FakeDmi {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A faked machine: its name, its DMI files, the preset expected.
type Machine = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[test]
fn auto_picks_the_cloud_a_faked_dmi_directory_shows() {
    let presets = presets();
    let cases: &[Machine] = &[
        (
            "nitro",
            &[("sys_vendor", "Amazon EC2"), ("product_name", "m6i.large")],
            "aws-ec2",
        ),
        (
            "xen-ec2",
            &[
                ("sys_vendor", "Xen"),
                ("bios_version", "4.11.amazon"),
                ("product_name", "HVM domU"),
            ],
            "aws-ec2",
        ),
        (
            "azure",
            &[
                ("sys_vendor", "Microsoft Corporation"),
                ("product_name", "Virtual Machine"),
                ("chassis_asset_tag", "7783-7084-3265-9085-8269-3286-77"),
            ],
            "azure",
        ),
        (
            "gce",
            &[
                ("sys_vendor", "Google"),
                ("product_name", "Google Compute Engine"),
            ],
            "gcp",
        ),
        (
            "oci",
            &[
                ("sys_vendor", "QEMU"),
                ("chassis_asset_tag", "OracleCloud.com"),
            ],
            "oci",
        ),
        (
            "ecs-alibaba",
            &[
                ("sys_vendor", "Alibaba Cloud"),
                ("product_name", "Alibaba Cloud ECS"),
            ],
            "alibaba",
        ),
        (
            "nova",
            &[
                ("sys_vendor", "OpenStack Foundation"),
                ("product_name", "OpenStack Nova"),
            ],
            "openstack",
        ),
        (
            "scw",
            &[("sys_vendor", "Scaleway"), ("product_name", "PRO2-S")],
            "scaleway",
        ),
    ];
    for (name, files, expected) in cases {
        let dir = FakeDmi::new(name, files);
        let dmi = Dmi::read(&dir.0, &presets);
        let (picked, why) = auto(&presets, &dmi).unwrap_or_else(|| panic!("{name}: none"));
        assert_eq!(picked.name, *expected, "{name}: {why}");
        assert!(why.starts_with("DMI "), "{name}: {why}");
    }
}

#[test]
fn auto_falls_back_to_ec2_where_no_cloud_is_recognised() {
    let presets = presets();
    // Not a cloud: plain Hyper-V (Azure's vendor, another asset tag), a
    // Xen that is not Amazon's, a machine without DMI. EC2's addresses.
    for (name, files) in [
        (
            "hyper-v",
            &[
                ("sys_vendor", "Microsoft Corporation"),
                ("chassis_asset_tag", "1234-5678"),
            ][..],
        ),
        (
            "xen",
            &[("sys_vendor", "Xen"), ("bios_version", "4.11")][..],
        ),
        ("none", &[][..]),
    ] {
        let dir = FakeDmi::new(name, files);
        let dmi = Dmi::read(&dir.0, &presets);
        assert_eq!(
            recognise(&presets, &dmi).map(|(p, _)| &p.name),
            None,
            "{name}"
        );
        let (picked, why) = auto(&presets, &dmi).unwrap_or_else(|| panic!("{name}: none"));
        assert_eq!(picked.name, FALLBACK, "{name}");
        assert!(why.contains("no cloud recognised"), "{why}");
    }
}

#[test]
fn a_preset_file_with_a_mistake_is_refused_with_its_name() {
    for (text, expected) in [
        (
            "[x]\ncloud = \"c\"\nkind = \"host\"\nserves = \"s\"\naddresses = [\"10.0.0.1/8\"]\n",
            "presets: [x] addresses:",
        ),
        (
            "[x]\ncloud = \"c\"\nkind = \"guest\"\nserves = \"s\"\naddresses = [\"10.0.0.1\"]\n",
            "presets: [x] kind: \"guest\"",
        ),
        (
            "[x]\ncloud = \"c\"\nkind = \"host\"\nserves = \"s\"\naddresses = [\"10.0.0.1\"]\n\
             dmi = [{}]\n",
            "presets: [x] dmi: an empty rule",
        ),
        (
            "[x]\ncloud = \"c\"\nkind = \"host\"\nserves = \"s\"\naddresses = [\"10.0.0.1\"]\n\
             port = 1\n",
            "presets: [x] unknown key \"port\"",
        ),
    ] {
        match parse(text) {
            Ok(p) => panic!("accepted {p:?}"),
            Err(e) => assert!(e.starts_with(expected), "{e}"),
        }
    }
}

#[test]
fn a_policy_names_presets_and_auto_expands_to_what_dmi_shows() {
    use std::path::Path;

    use crate::policy::PolicySpec;

    let parse = |text: &str| PolicySpec::parse(Path::new("p.toml"), text);
    let spec = parse(
        "[endpoints]\npresets = [\"gcp\", \"scaleway\"]\naddresses = [\"192.0.2.1:443/tcp\"]\n\
         [allow]\nuids = [0]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.presets, ["gcp", "scaleway"]);
    assert_eq!(
        spec.addresses(),
        [
            "169.254.169.254:80/tcp",
            "169.254.42.42:80/tcp",
            "[fd00:42::42]:80/tcp",
            "192.0.2.1:443/tcp"
        ]
    );
    // A preset's address written again is a duplicate, named.
    let e = parse("[endpoints]\npresets = [\"aws-ec2\"]\naddresses = [\"169.254.169.254\"]\n")
        .expect_err("a duplicate");
    assert!(
        e.to_string()
            .contains("duplicate address \"169.254.169.254\""),
        "{e}"
    );
    // An unknown name is refused.
    let e = parse("[endpoints]\npresets = [\"aws\"]\n[allow]\nuids = [0]\n").expect_err("refused");
    let text = e.to_string();
    assert!(
        text.contains("unknown preset \"aws\", expected \"auto\" or one of aws-ec2"),
        "{text}"
    );
}

#[test]
fn workload_presets_make_workload_endpoints_whose_addresses_are_theirs_alone() {
    use std::path::Path;

    use crate::policy::{EndpointKind, PolicySpec};

    let parse = |text: &str| PolicySpec::parse(Path::new("p.toml"), text);
    let spec = parse(
        "[endpoints]\npresets = [\"aws-ec2\", \"aws-ecs\", \"aws-eks-pod-identity\"]\n\
         addresses = [\"127.0.0.1:51678/tcp\"]\n[allow]\nuids = [0]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        spec.addresses(),
        [
            "169.254.169.254",
            "fd00:ec2::254",
            "169.254.170.2:80/tcp",
            "169.254.170.23:80/tcp",
            "[fd00:ec2::23]:80/tcp",
            "127.0.0.1:51678/tcp"
        ]
    );
    for (addr, kind) in [
        ("169.254.169.254", EndpointKind::Host),
        ("127.0.0.1", EndpointKind::Host),
        ("169.254.170.2", EndpointKind::Workload),
        ("169.254.170.23", EndpointKind::Workload),
        ("fd00:ec2::23", EndpointKind::Workload),
    ] {
        let ip: IpAddr = addr.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.kind_of(ip), kind, "{addr}");
    }
    // A workload endpoint's address written again, with another port, is
    // refused: the kind is the address's, its ports the preset's.
    let e =
        parse("[endpoints]\npresets = [\"aws-ecs\"]\naddresses = [\"169.254.170.2:8080/tcp\"]\n")
            .expect_err("refused");
    assert!(
        e.to_string()
            .contains("169.254.170.2 is a workload endpoint"),
        "{e}"
    );
}

#[test]
fn no_address_is_both_a_host_and_a_workload_endpoint() {
    let presets = presets();
    for w in presets.iter().filter(|p| p.kind == Kind::Workload) {
        assert!(w.with.is_some() && !w.shows.is_empty(), "{}", w.name);
        for h in presets.iter().filter(|p| p.kind == Kind::Host) {
            for (addr, _) in &w.addresses {
                assert!(
                    h.addresses.iter().all(|(a, _)| a != addr),
                    "{addr}: {} and {}",
                    w.name,
                    h.name
                );
            }
        }
    }
}

#[test]
fn auto_adds_the_workload_presets_the_host_shows_on_its_cloud_only() {
    let presets = presets();
    let root = FakeDmi::new("host-root", &[]);
    let on = |cloud: &str| -> Vec<String> {
        shown(&presets, cloud, &root.0)
            .into_iter()
            .map(|(p, why)| format!("{} ({why})", p.name))
            .collect()
    };
    assert!(on("aws").is_empty());
    fs::create_dir_all(root.0.join("etc/ecs")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(on("aws"), ["aws-ecs (/etc/ecs exists)"]);
    // A kubelet: EKS Pod Identity too. Another cloud: neither.
    fs::create_dir_all(root.0.join("etc/kubernetes/kubelet")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        on("aws"),
        [
            "aws-ecs (/etc/ecs exists)",
            "aws-eks-pod-identity (/etc/kubernetes/kubelet exists)"
        ]
    );
    assert!(on("gcp").is_empty());
}

#[test]
fn auto_in_a_policy_adds_what_the_host_root_shows() {
    use std::path::Path;

    use crate::policy::{EndpointKind, PolicySpec};

    let dmi = FakeDmi::new("policy-ec2-ecs", &[("sys_vendor", "Amazon EC2")]);
    let root = FakeDmi::new("policy-ec2-ecs-root", &[]);
    fs::create_dir_all(root.0.join("etc/ecs")).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY (of the test): as in `auto_in_a_policy_reads_the_dmi_root_it_is_given`;
    // the two are serialised by the lock.
    let _lock = ENV_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    unsafe {
        std::env::set_var(DMI_ROOT_ENV, &dmi.0);
        std::env::set_var(HOST_ROOT_ENV, &root.0);
    }
    let spec = PolicySpec::parse(
        Path::new("p.toml"),
        "[endpoints]\npresets = [\"auto\"]\n[allow]\nuids = [0]\n",
    );
    unsafe {
        std::env::remove_var(DMI_ROOT_ENV);
        std::env::remove_var(HOST_ROOT_ENV);
    }
    let spec = spec.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        spec.presets,
        [
            "aws-ec2 (auto: DMI sys_vendor=\"Amazon EC2\")",
            "aws-ecs (auto: /etc/ecs exists)"
        ]
    );
    let ecs: IpAddr = "169.254.170.2".parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.kind_of(ecs), EndpointKind::Workload);
}

/// Serialises the tests that set [`DMI_ROOT_ENV`].
static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn auto_in_a_policy_reads_the_dmi_root_it_is_given() {
    use std::path::Path;

    use crate::policy::PolicySpec;

    let dir = FakeDmi::new(
        "policy-azure",
        &[
            ("sys_vendor", "Microsoft Corporation"),
            ("chassis_asset_tag", "7783-7084-3265-9085-8269-3286-77"),
        ],
    );
    // SAFETY (of the test): no other test of this binary reads the
    // variable; each that sets it names its own directory, and takes the
    // lock.
    let _lock = ENV_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    unsafe { std::env::set_var(DMI_ROOT_ENV, &dir.0) };
    let spec = PolicySpec::parse(
        Path::new("p.toml"),
        "[endpoints]\npresets = [\"auto\"]\n[allow]\nuids = [0]\n",
    );
    unsafe { std::env::remove_var(DMI_ROOT_ENV) };
    let spec = spec.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        spec.presets,
        ["azure (auto: DMI sys_vendor=\"Microsoft Corporation\" \
          chassis_asset_tag=\"7783-7084-3265-9085-8269-3286-77\")"]
    );
    assert_eq!(
        spec.addresses(),
        [
            "169.254.169.254:80/tcp",
            "168.63.129.16:80/tcp",
            "168.63.129.16:32526/tcp"
        ]
    );
}

/// The recipes of docs/policy.md's "Workload endpoints", as written there.
fn recipes() -> Vec<(String, String)> {
    recipes_in("Workload endpoints")
}

/// The recipes of the section `heading` of docs/policy.md, as written
/// there: the title and the indented block after each "### Recipe:"
/// heading.
pub(in crate::policy) fn recipes_in(heading: &str) -> Vec<(String, String)> {
    let doc = include_str!("../../../../docs/policy.md");
    let section = doc
        .split_once(&format!("\n## {heading}"))
        .map_or("", |(_, rest)| rest);
    let section = section.split_once("\n## ").map_or(section, |(s, _)| s);
    let mut found = Vec::new();
    for part in section.split("\n### Recipe: ").skip(1) {
        let (title, rest) = part.split_once('\n').unwrap_or((part, ""));
        let block: Vec<&str> = rest
            .lines()
            .skip_while(|l| !l.starts_with("    "))
            .take_while(|l| l.starts_with("    ") || l.is_empty())
            .map(|l| l.strip_prefix("    ").unwrap_or(l))
            .collect();
        found.push((title.to_owned(), block.join("\n")));
    }
    found
}

#[test]
fn the_workload_recipes_of_the_policy_reference_validate_as_they_say() {
    use std::path::Path;

    use crate::policy::{EndpointKind, PolicySpec};

    let recipes = recipes();
    assert_eq!(recipes.len(), 2, "{recipes:?}");
    for (title, text) in &recipes {
        let spec = PolicySpec::parse(Path::new("recipe.toml"), text)
            .unwrap_or_else(|e| panic!("{title}: {e}\n{text}"));
        let imds: IpAddr = "169.254.169.254".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.kind_of(imds), EndpointKind::Host, "{title}");
        assert!(!spec.workload.is_empty(), "{title}: no workload endpoint");
        assert!(spec.warnings().is_empty(), "{title}: {:?}", spec.warnings());
        if title.contains("EKS") {
            // DaemonSets' pods: by their name and a pattern for the suffix.
            let pods: Vec<&str> = spec
                .entries
                .iter()
                .filter_map(|e| match &e.identity {
                    crate::policy::Identity::Pod(p) => Some(p.as_str()),
                    _ => None,
                })
                .collect();
            assert!(!pods.is_empty(), "{title}");
            assert!(pods.iter().all(|p| p.ends_with("-*")), "{title}: {pods:?}");
        }
        if title.contains("ECS") {
            let lo: IpAddr = "127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(spec.kind_of(lo), EndpointKind::Host, "{title}");
            assert!(
                spec.addresses().contains(&"127.0.0.1:51678/tcp".to_owned()),
                "{title}: {:?}",
                spec.addresses()
            );
        }
    }
}
