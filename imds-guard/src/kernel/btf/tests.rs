//! BTF blobs built by hand, in the layout of `include/uapi/linux/btf.h`,
//! so that renames, anonymous unions, bit fields and missing members can be
//! tested without the kernels that have them; and this kernel's own BTF.

use super::*;

/// Writes a BTF blob type by type.
pub(crate) struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

impl Builder {
    pub(crate) fn new() -> Self {
        Self {
            types: Vec::new(),
            strings: vec![0],
            next_id: 1,
        }
    }

    fn str(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn header(&mut self, name: &str, kind: u32, vlen: u32, kind_flag: bool, size: u32) -> u32 {
        let name = self.str(name);
        let info = vlen | (kind << 24) | (u32::from(kind_flag) << 31);
        for word in [name, info, size] {
            self.types.extend_from_slice(&word.to_ne_bytes());
        }
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
        let id = self.header(name, BtfKind::Int as u32, 0, false, size);
        self.types.extend_from_slice(&(size * 8).to_ne_bytes());
        id
    }

    pub(crate) fn ptr(&mut self, to: u32) -> u32 {
        self.header("", BtfKind::Ptr as u32, 0, false, to)
    }

    pub(crate) fn typedef(&mut self, name: &str, to: u32) -> u32 {
        self.header(name, BtfKind::Typedef as u32, 0, false, to)
    }

    /// An enum, to check that kinds the lookups ignore are skipped right.
    pub(crate) fn enumeration(&mut self, name: &str, values: &[(&str, i32)]) -> u32 {
        let id = self.header(name, BtfKind::Enum as u32, values.len() as u32, false, 4);
        for &(n, v) in values {
            let n = self.str(n);
            self.types.extend_from_slice(&n.to_ne_bytes());
            self.types.extend_from_slice(&v.to_ne_bytes());
        }
        id
    }

    /// A struct (or union) of `(name, type, bit offset, bit field size)`.
    pub(crate) fn composite(
        &mut self,
        union: bool,
        name: &str,
        size: u32,
        members: &[(&str, u32, u32, u32)],
    ) -> u32 {
        let kind_flag = members.iter().any(|m| m.3 != 0);
        let kind = if union {
            BtfKind::Union as u32
        } else {
            BtfKind::Struct as u32
        };
        let id = self.header(name, kind, members.len() as u32, kind_flag, size);
        for &(n, t, bits, size) in members {
            let n = self.str(n);
            let offset = if kind_flag { bits | (size << 24) } else { bits };
            for word in [n, t, offset] {
                self.types.extend_from_slice(&word.to_ne_bytes());
            }
        }
        id
    }

    pub(crate) fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
        let members: Vec<_> = members.iter().map(|&(n, t, b)| (n, t, b, 0)).collect();
        self.composite(false, name, size, &members)
    }

    pub(crate) fn build(&self) -> Vec<u8> {
        let hdr_len = 24u32;
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_ne_bytes());
        out.push(1);
        out.push(0);
        for word in [
            hdr_len,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ] {
            out.extend_from_slice(&word.to_ne_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// `kernfs_node` with its parent under `parent_name`, inside an anonymous
/// union as some kernels have it, behind a typedef'd pointer.
fn kernfs(parent_name: &str) -> Btf {
    let mut b = Builder::new();
    let int = b.int("unsigned int", 4);
    b.enumeration("kernfs_node_type", &[("KERNFS_DIR", 1)]);
    let node = b.strukt("kernfs_node_fwd_dummy", 0, &[]);
    let ptr = b.ptr(node);
    let alias = b.typedef("kn_ptr", ptr);
    let anon = b.composite(
        true,
        "",
        8,
        &[(parent_name, alias, 0, 0), ("other", int, 0, 0)],
    );
    let flags = b.composite(false, "", 4, &[("a", int, 0, 3), ("b", int, 3, 5)]);
    b.strukt(
        "kernfs_node",
        64,
        &[
            ("count", int, 0),
            ("", anon, 64),
            ("name", ptr, 128),
            ("", flags, 192),
        ],
    );
    Btf::parse(&b.build()).expect("well-formed")
}

#[test]
fn finds_a_member_inside_an_anonymous_union() {
    let btf = kernfs("parent");
    let f = btf
        .field("kernfs_node", &[&["parent", "__parent"]])
        .expect("found");
    assert_eq!(f.offset, 8);
    assert_eq!(
        btf.field("kernfs_node", &[&["name"]])
            .expect("found")
            .offset,
        16
    );
    assert_eq!(btf.struct_size("kernfs_node").expect("size"), 64);
}

#[test]
fn a_renamed_member_is_found_under_its_new_name() {
    let btf = kernfs("__parent");
    let f = btf
        .field("kernfs_node", &[&["parent", "__parent"]])
        .expect("found under the new name");
    assert_eq!(f.offset, 8);
}

#[test]
fn a_missing_member_names_the_struct_and_every_name_tried() {
    let btf = kernfs("__parent");
    let e = btf
        .field("kernfs_node", &[&["parent"]])
        .expect_err("not there");
    assert_eq!(
        e.to_string(),
        "struct kernfs_node has no member named parent"
    );
    let e = btf
        .field("kernfs_node", &[&["up", "ancestor"]])
        .expect_err("not there");
    assert_eq!(
        e.to_string(),
        "struct kernfs_node has no member named up or ancestor"
    );
    let e = btf
        .field("kernfs_nod", &[&["name"]])
        .expect_err("no struct");
    assert_eq!(e.to_string(), "the kernel's BTF has no struct kernfs_nod");
}

#[test]
fn bit_fields_are_refused() {
    let btf = kernfs("parent");
    let e = btf.field("kernfs_node", &[&["b"]]).expect_err("bit field");
    assert_eq!(
        e.to_string(),
        "kernfs_node.b is a bit field, which the programs cannot read"
    );
}

#[test]
fn a_path_walks_through_embedded_structs() {
    // sock { ...; sock_common __sk_common @16 } ; sock_common { ...;
    // possible_net_t skc_net @48 } ; possible_net_t { net *net @0 }.
    let mut b = Builder::new();
    let int = b.int("int", 4);
    let net = b.strukt("net", 256, &[("passive", int, 0)]);
    let net_ptr = b.ptr(net);
    let possible = b.strukt("", 8, &[("net", net_ptr, 0)]);
    let possible = b.typedef("possible_net_t", possible);
    let common = b.strukt(
        "sock_common",
        136,
        &[("skc_hash", int, 0), ("skc_net", possible, 384)],
    );
    b.strukt(
        "sock",
        768,
        &[("pad", int, 0), ("__sk_common", common, 128)],
    );
    let btf = Btf::parse(&b.build()).expect("well-formed");
    let f = btf
        .field("sock", &[&["__sk_common"], &["skc_net"], &["net"]])
        .expect("found");
    assert_eq!(f.offset, 16 + 48);
    let e = btf
        .field("sock", &[&["pad"], &["x"]])
        .expect_err("an int has no members");
    assert_eq!(
        e.to_string(),
        "sock.pad is not a struct or union, so x cannot be inside it"
    );
}

#[test]
fn malformed_blobs_are_errors_not_panics() {
    let mut blob = kernfs_blob();
    assert!(Btf::parse(&blob[..10]).is_err());
    blob[0] ^= 0xff;
    let e = Btf::parse(&blob).expect_err("bad magic");
    assert!(e.to_string().starts_with("malformed BTF: magic"), "{e}");
    let good = kernfs_blob();
    for len in 0..good.len() {
        let _ = Btf::parse(&good[..len]);
    }
}

fn kernfs_blob() -> Vec<u8> {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    b.strukt("kernfs_node", 8, &[("count", int, 0)]);
    b.build()
}

#[test]
fn this_kernel_has_the_credentials_where_its_btf_says() {
    let btf = Btf::from_sys_fs().expect("this kernel publishes its BTF");
    let cred = btf
        .field("task_struct", &[&["cred"]])
        .expect("task_struct.cred");
    let real_cred = btf
        .field("task_struct", &[&["real_cred"]])
        .expect("task_struct.real_cred");
    assert!(cred.offset > 0 && real_cred.offset > 0);
    // real_cred comes just before cred in every kernel since 2.6.29.
    assert_eq!(cred.offset, real_cred.offset + 8);
    let uid = btf.field("cred", &[&["uid"]]).expect("cred.uid");
    let gid = btf.field("cred", &[&["gid"]]).expect("cred.gid");
    assert_eq!(gid.offset, uid.offset + 4);
}
