//! What the guard needs of the kernel, asked of the kernel itself: its BTF
//! describes the `bpf(2)` commands, map types, attach types and helpers it
//! has (`enum bpf_cmd`, `bpf_map_type`, `bpf_attach_type`, `bpf_func_id`).
//! Distribution kernels backport features, so a version number proves
//! nothing; a kernel that lacks one is refused with the feature's name.
//!
//! Whether a program type may call a helper the kernel has is the
//! verifier's to say: a program it refuses for that is reported by
//! [`missing_helper`] from the verifier's own words.

use imds_guard_common::Bounds;

use super::btf::{Btf, BtfError};

/// One thing the guard needs, and how the kernel says it has it.
pub struct Feature {
    /// What it is, as an operator would search for it.
    pub name: &'static str,
    /// What the guard uses it for.
    pub needed_for: &'static str,
    /// The first kernel.org release that has it, for docs/operating.md and the
    /// message: distribution kernels may have it earlier.
    pub since: &'static str,
    how: How,
}

/// Where the kernel's BTF shows the feature.
enum How {
    /// Enumerators of an enum, all of which must be there.
    Enumerators(&'static str, &'static [&'static str]),
    /// A struct the feature brought.
    Struct(&'static str),
}

/// Everything the guard needs, in the order it is reported.
pub const FEATURES: &[Feature] = &[
    Feature {
        name: "cgroup sock_addr programs",
        needed_for: "deciding connect() and sendmsg() to the metadata service",
        since: "4.17",
        how: How::Enumerators(
            "bpf_attach_type",
            &[
                "BPF_CGROUP_INET4_CONNECT",
                "BPF_CGROUP_INET6_CONNECT",
                "BPF_CGROUP_UDP4_SENDMSG",
                "BPF_CGROUP_UDP6_SENDMSG",
                "BPF_CGROUP_INET_EGRESS",
            ],
        ),
    },
    Feature {
        name: "cgroup sock_ops programs and sockhashes",
        needed_for: "judging the requests of callers allowed some requests",
        since: "4.18",
        how: How::Enumerators(
            "bpf_attach_type",
            &["BPF_CGROUP_SOCK_OPS", "BPF_SK_MSG_VERDICT"],
        ),
    },
    Feature {
        name: "cgroup bpf_link",
        needed_for: "attachments that survive the agent (pinned links)",
        since: "5.7",
        how: How::Struct("bpf_cgroup_link"),
    },
    Feature {
        name: "BPF_LINK_UPDATE",
        needed_for: "taking over a running guard without a gap",
        since: "5.7",
        how: How::Enumerators("bpf_cmd", &["BPF_LINK_CREATE", "BPF_LINK_UPDATE"]),
    },
    Feature {
        name: "batched map updates",
        needed_for: "writing a large policy in a few system calls",
        since: "5.6",
        how: How::Enumerators("bpf_cmd", &["BPF_MAP_UPDATE_BATCH", "BPF_MAP_DELETE_BATCH"]),
    },
    Feature {
        name: "BPF ring buffer",
        needed_for: "the decision records",
        since: "5.8",
        how: How::Enumerators("bpf_map_type", &["BPF_MAP_TYPE_RINGBUF"]),
    },
    Feature {
        name: "maps of maps",
        needed_for: "waiting out the programs' last readers of a replaced policy",
        since: "4.12",
        how: How::Enumerators("bpf_map_type", &["BPF_MAP_TYPE_ARRAY_OF_MAPS"]),
    },
    Feature {
        name: "socket storage",
        needed_for: "remembering the sockets a connect was let through",
        since: "5.2",
        how: How::Enumerators("bpf_map_type", &["BPF_MAP_TYPE_SK_STORAGE"]),
    },
    Feature {
        name: "the helpers the programs call",
        needed_for: "reading credentials, sockets and packets",
        since: "5.8",
        how: How::Enumerators(
            "bpf_func_id",
            &[
                "BPF_FUNC_probe_read_kernel",
                "BPF_FUNC_get_current_task",
                "BPF_FUNC_get_current_uid_gid",
                "BPF_FUNC_get_current_cgroup_id",
                "BPF_FUNC_ringbuf_reserve",
                "BPF_FUNC_ringbuf_submit",
                "BPF_FUNC_ringbuf_query",
                "BPF_FUNC_sk_storage_get",
                "BPF_FUNC_sk_fullsock",
                "BPF_FUNC_skb_cgroup_id",
                "BPF_FUNC_skb_load_bytes",
            ],
        ),
    },
];

/// `bpf_loop`, which the walks over a caller's groups and user namespaces
/// use where the kernel has it; without it the unrolled build loads.
const LOOP: How = How::Enumerators("bpf_func_id", &["BPF_FUNC_loop"]);

/// The two builds of the programs (`build.rs`), which differ only in how
/// far they read a caller's groups and user namespaces ([`Bounds`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// With `bpf_loop` (Linux 5.17).
    Loop,
    /// Bounded loops the verifier walks step by step (5.10 to 5.16).
    Unrolled,
}

impl Build {
    /// What `status` and the logs call it.
    pub fn name(self) -> &'static str {
        match self {
            Build::Loop => "bpf_loop",
            Build::Unrolled => "unrolled",
        }
    }

    pub fn bounds(self) -> Bounds {
        match self {
            Build::Loop => Bounds::LOOP,
            Build::Unrolled => Bounds::UNROLLED,
        }
    }

    /// The build whose bounds are `bounds`.
    pub fn of(bounds: Bounds) -> Option<Self> {
        [Build::Loop, Build::Unrolled]
            .into_iter()
            .find(|b| b.bounds() == bounds)
    }

    /// The build for a kernel: with `bpf_loop` where `btf` shows it, else
    /// unrolled. `asked` (`IMDS_GUARD_PROGRAMS`) picks one instead: the
    /// unrolled build loads on any kernel (to try what a 5.10 host runs),
    /// the `bpf_loop` one only where the kernel has it.
    pub fn choose(btf: &Btf, release: &str, asked: Option<&str>) -> Result<Self, RequireError> {
        let has_loop = missing(btf, &LOOP)?.is_empty();
        match asked {
            None | Some("") if has_loop => Ok(Build::Loop),
            None | Some("") | Some("unrolled") => Ok(Build::Unrolled),
            Some("bpf_loop") if has_loop => Ok(Build::Loop),
            Some("bpf_loop") => Err(RequireError::Missing(MissingFeature {
                release: release.to_owned(),
                name: "bpf_loop",
                missing: "BPF_FUNC_loop".to_owned(),
                needed_for: "the bpf_loop build of the programs, which IMDS_GUARD_PROGRAMS asks for",
                since: "5.17",
            })),
            Some(other) => Err(RequireError::Asked(other.to_owned())),
        }
    }
}

/// Names the build of the programs to load (`bpf_loop` or `unrolled`)
/// rather than the one the kernel's features choose.
pub const PROGRAMS_ENV: &str = "IMDS_GUARD_PROGRAMS";

impl Build {
    /// [`Build::choose`] with what [`PROGRAMS_ENV`] asks for.
    pub fn for_kernel(btf: &Btf, release: &str) -> Result<Self, RequireError> {
        let asked = std::env::var(PROGRAMS_ENV).ok();
        Self::choose(btf, release, asked.as_deref())
    }

    /// The build the agent loads on the running kernel, for what `check`
    /// and `validate` say of its bounds: the `bpf_loop` one where that
    /// cannot be told (the agent would not start there).
    pub fn running() -> Self {
        Btf::from_sys_fs()
            .ok()
            .and_then(|btf| Self::for_kernel(&btf, &super::offsets::kernel_release()).ok())
            .unwrap_or(Build::Loop)
    }
}

/// What [`check`] found of one feature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub name: &'static str,
    pub present: bool,
    /// The enumerators or struct missing, when it is not.
    pub missing: Vec<&'static str>,
}

/// A feature the running kernel lacks.
#[derive(Debug, thiserror::Error)]
#[error(
    "this kernel ({release}) lacks {name} ({missing}), which the guard needs for {needed_for} \
     (Linux {since} and later have it; distribution kernels may backport it)"
)]
pub struct MissingFeature {
    pub release: String,
    pub name: &'static str,
    pub missing: String,
    pub needed_for: &'static str,
    pub since: &'static str,
}

/// Every feature, as `btf` shows it.
pub fn check(btf: &Btf) -> Result<Vec<Found>, BtfError> {
    FEATURES
        .iter()
        .map(|f| {
            let missing = missing(btf, &f.how)?;
            Ok(Found {
                name: f.name,
                present: missing.is_empty(),
                missing,
            })
        })
        .collect()
}

/// What of `how` the kernel lacks: nothing when it has the feature.
fn missing(btf: &Btf, how: &How) -> Result<Vec<&'static str>, BtfError> {
    Ok(match *how {
        How::Struct(name) => {
            if btf.has_struct(name) {
                Vec::new()
            } else {
                vec![name]
            }
        }
        How::Enumerators(enum_name, names) => {
            let mut missing = Vec::new();
            for &name in names {
                if !btf.has_enumerator(enum_name, name)? {
                    missing.push(name);
                }
            }
            missing
        }
    })
}

/// Every feature, or the first one the kernel (`release`) lacks.
pub fn require(btf: &Btf, release: &str) -> Result<Vec<Found>, RequireError> {
    let found = check(btf)?;
    if let Some((feature, f)) = FEATURES.iter().zip(&found).find(|(_, f)| !f.present) {
        return Err(RequireError::Missing(MissingFeature {
            release: release.to_owned(),
            name: feature.name,
            missing: f.missing.join(", "),
            needed_for: feature.needed_for,
            since: feature.since,
        }));
    }
    Ok(found)
}

#[derive(Debug, thiserror::Error)]
pub enum RequireError {
    #[error(transparent)]
    Missing(MissingFeature),
    #[error("cannot read the kernel's BTF to check its features")]
    Btf(#[from] BtfError),
    #[error("IMDS_GUARD_PROGRAMS={0}: expected bpf_loop or unrolled")]
    Asked(String),
}

/// The helper a verifier refused a program for, from its log: "unknown
/// func bpf_get_current_pid_tgid#14" (the kernel lacks it or forbids it to
/// this program type) or "program of this type cannot use helper
/// bpf_x#N".
pub fn missing_helper(verifier_log: &str) -> Option<&str> {
    for marker in ["unknown func ", "cannot use helper "] {
        if let Some(at) = verifier_log.find(marker) {
            let rest = &verifier_log[at + marker.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '#'))
                .unwrap_or(rest.len());
            return Some(&rest[..end]);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf::tests::Builder;

    /// A kernel that has everything but `missing`.
    fn kernel_without(missing: &str) -> Btf {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        for f in FEATURES {
            match f.how {
                How::Struct(name) if name != missing => {
                    b.strukt(name, 8, &[("x", int, 0)]);
                }
                How::Struct(_) => {}
                How::Enumerators(..) => {}
            }
        }
        let mut enums: Vec<(&str, Vec<(&str, i32)>)> = Vec::new();
        for how in FEATURES.iter().map(|f| &f.how).chain([&LOOP]) {
            if let How::Enumerators(e, names) = *how {
                let values = names
                    .iter()
                    .filter(|n| **n != missing)
                    .enumerate()
                    .map(|(i, n)| (*n, i as i32));
                match enums.iter_mut().find(|(name, _)| *name == e) {
                    Some((_, v)) => v.extend(values),
                    None => enums.push((e, values.collect())),
                }
            }
        }
        for (name, values) in &enums {
            b.enumeration(name, values);
        }
        Btf::parse(&b.build()).expect("well-formed")
    }

    #[test]
    fn a_kernel_with_everything_passes() {
        let found = require(&kernel_without(""), "test").expect("everything is there");
        assert!(found.iter().all(|f| f.present));
        assert_eq!(found.len(), FEATURES.len());
    }

    #[test]
    fn a_missing_command_is_named_with_the_kernel_and_what_it_is_for() {
        let e = require(&kernel_without("BPF_LINK_UPDATE"), "5.4.0-test").expect_err("missing");
        assert_eq!(
            e.to_string(),
            "this kernel (5.4.0-test) lacks BPF_LINK_UPDATE (BPF_LINK_UPDATE), which the guard \
             needs for taking over a running guard without a gap (Linux 5.7 and later have it; \
             distribution kernels may backport it)"
        );
    }

    #[test]
    fn a_kernel_without_the_ring_buffer_is_refused_by_the_feature_s_name() {
        let e =
            require(&kernel_without("BPF_MAP_TYPE_RINGBUF"), "5.4.0-test").expect_err("missing");
        assert!(
            e.to_string().starts_with(
                "this kernel (5.4.0-test) lacks BPF ring buffer (BPF_MAP_TYPE_RINGBUF)"
            ),
            "{e}"
        );
        let e = require(&kernel_without("BPF_FUNC_get_current_task"), "5.4.0-test")
            .expect_err("missing");
        assert!(e.to_string().contains("(BPF_FUNC_get_current_task)"), "{e}");
    }

    #[test]
    fn bpf_loop_chooses_the_build_and_is_not_required() {
        let full = kernel_without("");
        let old = kernel_without("BPF_FUNC_loop");
        require(&old, "5.10.0-test").expect("5.10 has everything else");
        let choose = |btf: &Btf, asked| Build::choose(btf, "5.10.0-test", asked);
        assert_eq!(choose(&full, None).expect("chosen"), Build::Loop);
        assert_eq!(choose(&old, None).expect("chosen"), Build::Unrolled);
        assert_eq!(choose(&old, Some("")).expect("chosen"), Build::Unrolled);
        assert_eq!(
            choose(&full, Some("unrolled")).expect("chosen"),
            Build::Unrolled
        );
        assert_eq!(
            choose(&full, Some("bpf_loop")).expect("chosen"),
            Build::Loop
        );
        let e = choose(&old, Some("bpf_loop")).expect_err("no bpf_loop here");
        assert!(
            e.to_string()
                .starts_with("this kernel (5.10.0-test) lacks bpf_loop (BPF_FUNC_loop)"),
            "{e}"
        );
        let e = choose(&full, Some("loop")).expect_err("no such build");
        assert_eq!(
            e.to_string(),
            "IMDS_GUARD_PROGRAMS=loop: expected bpf_loop or unrolled"
        );
    }

    #[test]
    fn each_build_is_known_by_its_bounds() {
        for build in [Build::Loop, Build::Unrolled] {
            assert_eq!(Build::of(build.bounds()), Some(build));
            assert_eq!(
                Bounds::from_groups(build.bounds().groups),
                Some(build.bounds())
            );
        }
        assert_eq!(Build::Unrolled.bounds().groups, 16);
        assert_eq!(Build::Loop.bounds().groups, imds_guard_common::MAX_GROUPS);
    }

    #[test]
    fn a_missing_struct_is_named() {
        let found = check(&kernel_without("bpf_cgroup_link")).expect("reads");
        let link = found
            .iter()
            .find(|f| f.name == "cgroup bpf_link")
            .expect("listed");
        assert!(!link.present);
        assert_eq!(link.missing, ["bpf_cgroup_link"]);
    }

    #[test]
    fn this_kernel_has_every_feature() {
        let btf = Btf::from_sys_fs().expect("this kernel publishes its BTF");
        let found = check(&btf).expect("reads");
        let missing: Vec<_> = found.iter().filter(|f| !f.present).collect();
        assert!(missing.is_empty(), "{missing:?}");
    }

    #[test]
    fn every_attach_type_of_the_programs_is_checked() {
        let checked: Vec<&str> = FEATURES
            .iter()
            .filter_map(|f| match f.how {
                How::Enumerators("bpf_attach_type", names) => Some(names),
                _ => None,
            })
            .flatten()
            .copied()
            .collect();
        for (row, attach_type) in crate::kernel::programs::guarding() {
            // The generated enum's variants are the kernel's names.
            let name = format!("{attach_type:?}");
            assert!(
                checked.contains(&name.as_str()),
                "{} attaches at {name}, which no feature checks",
                row.name
            );
        }
    }

    #[test]
    fn the_verifier_names_the_helper_it_refused() {
        let log = "442: (5d) if r1 != r8 goto pc+1457\n443: (85) call \
                   bpf_get_current_pid_tgid#14\nunknown func bpf_get_current_pid_tgid#14\n";
        assert_eq!(missing_helper(log), Some("bpf_get_current_pid_tgid#14"));
        assert_eq!(
            missing_helper("program of this type cannot use helper bpf_probe_read#4\n"),
            Some("bpf_probe_read#4")
        );
        assert_eq!(missing_helper("R1 invalid mem access 'scalar'"), None);
    }
}
