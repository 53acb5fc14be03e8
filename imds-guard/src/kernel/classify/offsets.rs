//! The offsets the classification programs read a new cgroup with,
//! resolved from the running kernel's BTF like the caller's
//! (`kernel/offsets.rs`): a field the kernel does not describe refuses the
//! start, naming the field, every name tried and the kernel.

use imds_guard_common::{CgroupOffsets, Offsets};

use crate::kernel::btf::{Btf, BtfError};

/// One field, with the names it has had (first found wins).
struct Wanted {
    strukt: &'static str,
    names: &'static [&'static str],
    set: fn(&mut CgroupOffsets, u32),
}

/// Every field, in the order of [`CgroupOffsets`].
const WANTED: &[Wanted] = &[
    Wanted {
        strukt: "cgroup",
        names: &["kn"],
        set: |o, v| o.cgroup_kn = v,
    },
    Wanted {
        strukt: "cgroup",
        names: &["root"],
        set: |o, v| o.cgroup_root = v,
    },
    Wanted {
        strukt: "cgroup_root",
        names: &["hierarchy_id"],
        set: |o, v| o.root_hierarchy_id = v,
    },
    // Renamed `__parent` in Linux 6.15, when it became RCU-protected.
    Wanted {
        strukt: "kernfs_node",
        names: &["parent", "__parent"],
        set: |o, v| o.kn_parent = v,
    },
    Wanted {
        strukt: "kernfs_node",
        names: &["name"],
        set: |o, v| o.kn_name = v,
    },
    Wanted {
        strukt: "kernfs_node",
        names: &["id"],
        set: |o, v| o.kn_id = v,
    },
];

/// A field the running kernel does not have where the programs need it.
#[derive(Debug, thiserror::Error)]
#[error(
    "this kernel ({release}) does not describe {strukt}.{field} in its BTF, which the guard needs \
     to classify cgroups by path as they are created; refusing to read it at a guessed offset"
)]
pub struct CgroupOffsetError {
    release: String,
    strukt: &'static str,
    field: String,
    #[source]
    source: Box<BtfError>,
}

/// Resolves every offset from `btf`, describing the kernel as `release`.
pub fn resolve(btf: &Btf, release: &str) -> Result<CgroupOffsets, CgroupOffsetError> {
    let mut offsets = CgroupOffsets {
        valid: Offsets::VALID,
        ..CgroupOffsets::default()
    };
    for w in WANTED {
        let field = btf
            .field(w.strukt, &[w.names])
            .map_err(|source| CgroupOffsetError {
                release: release.to_owned(),
                strukt: w.strukt,
                field: w.names.join("|"),
                source: Box::new(source),
            })?;
        (w.set)(&mut offsets, field.offset);
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{btf::tests::Builder, offsets::kernel_release};

    /// The structures the programs read, with made-up offsets and the
    /// kernfs parent named `parent`.
    fn fake_kernel(parent: Option<&str>) -> Btf {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let long = b.int("long long unsigned int", 8);
        let ptr = b.ptr(int);
        b.strukt(
            "cgroup",
            2048,
            &[
                ("self", int, 0),
                ("kn", ptr, 8 * 256),
                ("root", ptr, 8 * 512),
            ],
        );
        b.strukt(
            "cgroup_root",
            8192,
            &[("kf_root", ptr, 0), ("hierarchy_id", int, 8 * 12)],
        );
        let mut members = vec![
            ("count", int, 0),
            ("name", ptr, 8 * 24),
            ("id", long, 8 * 96),
        ];
        if let Some(parent) = parent {
            members.push((parent, ptr, 8 * 16));
        }
        b.strukt("kernfs_node", 128, &members);
        Btf::parse(&b.build()).expect("well-formed")
    }

    #[test]
    fn every_offset_is_resolved_whichever_name_the_parent_has() {
        for parent in ["parent", "__parent"] {
            let o = resolve(&fake_kernel(Some(parent)), "test").expect("resolves");
            assert_eq!(o.valid, Offsets::VALID);
            assert_eq!(
                (o.cgroup_kn, o.cgroup_root, o.root_hierarchy_id),
                (256, 512, 12)
            );
            assert_eq!((o.kn_parent, o.kn_name, o.kn_id), (16, 24, 96), "{parent}");
        }
    }

    #[test]
    fn a_kernel_without_the_parent_is_refused_with_every_name_tried() {
        let e = resolve(&fake_kernel(None), "6.99.0-test").expect_err("no parent");
        assert_eq!(
            e.to_string(),
            "this kernel (6.99.0-test) does not describe kernfs_node.parent|__parent in its BTF, \
             which the guard needs to classify cgroups by path as they are created; refusing to \
             read it at a guessed offset"
        );
        assert_eq!(
            std::error::Error::source(&e).map(ToString::to_string),
            Some("struct kernfs_node has no member named parent or __parent".to_owned())
        );
        let renamed = resolve(&fake_kernel(Some("parent_node")), "6.99.0-test")
            .expect_err("an unknown name is no parent");
        assert!(renamed.to_string().contains("kernfs_node.parent|__parent"));
    }

    #[test]
    fn this_kernel_has_every_field() {
        let btf = Btf::from_sys_fs().expect("this kernel publishes its BTF");
        let o = resolve(&btf, &kernel_release()).expect("every field is there");
        assert_eq!(o.valid, Offsets::VALID);
        assert_ne!(o.kn_parent, o.kn_name);
    }
}
