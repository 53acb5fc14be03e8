//! The offsets the programs read a caller's identity with, resolved from
//! the running kernel's BTF (`btf.rs`) into [`Offsets`], which the loader
//! writes into the programs before they load.
//!
//! Each field lists the names it has had across kernel versions; the first
//! one the kernel has wins. A kernel that has none of them is refused with
//! a message naming the field and the kernel: the programs never read
//! memory at a guessed place.

use imds_guard_common::{ForwardOffsets, Offsets, RequestOffsets};

use super::btf::{Btf, BtfError};

/// One field the programs read: where it is described, and how to find it.
struct Wanted {
    /// What it is for, in the error message.
    why: &'static str,
    strukt: &'static str,
    /// The member's names, step by step through embedded structs; an empty
    /// path asks for the size of `strukt` itself (the stride of an array
    /// of it).
    path: &'static [&'static [&'static str]],
    set: fn(&mut Offsets, u32),
    get: fn(&Offsets) -> u32,
}

/// Every field, in the order of [`Offsets`].
const WANTED: &[Wanted] = &[
    Wanted {
        why: "telling kernel threads from processes",
        strukt: "task_struct",
        path: &[&["flags"]],
        set: |o, v| o.task_flags = v,
        get: |o| o.task_flags,
    },
    Wanted {
        why: "reading a task's credentials",
        strukt: "task_struct",
        path: &[&["cred"]],
        set: |o, v| o.task_cred = v,
        get: |o| o.task_cred,
    },
    Wanted {
        why: "reading the real uid",
        strukt: "cred",
        path: &[&["uid"]],
        set: |o, v| o.cred_uid = v,
        get: |o| o.cred_uid,
    },
    Wanted {
        why: "reading the real gid",
        strukt: "cred",
        path: &[&["gid"]],
        set: |o, v| o.cred_gid = v,
        get: |o| o.cred_gid,
    },
    Wanted {
        why: "finding a socket's owner",
        strukt: "sock",
        path: &[&["sk_socket"]],
        set: |o, v| o.sock_socket = v,
        get: |o| o.sock_socket,
    },
    Wanted {
        why: "finding a socket's owner",
        strukt: "socket",
        path: &[&["file"]],
        set: |o, v| o.socket_file = v,
        get: |o| o.socket_file,
    },
    Wanted {
        why: "finding a socket's owner",
        strukt: "file",
        path: &[&["f_cred"]],
        set: |o, v| o.file_cred = v,
        get: |o| o.file_cred,
    },
    Wanted {
        why: "naming the process whose packet leaves",
        strukt: "task_struct",
        path: &[&["pid"]],
        set: |o, v| o.task_pid = v,
        get: |o| o.task_pid,
    },
    Wanted {
        why: "naming the process whose packet leaves",
        strukt: "task_struct",
        path: &[&["tgid"]],
        set: |o, v| o.task_tgid = v,
        get: |o| o.task_tgid,
    },
    Wanted {
        why: "naming the process whose packet leaves",
        strukt: "task_struct",
        path: &[&["comm"]],
        set: |o, v| o.task_comm = v,
        get: |o| o.task_comm,
    },
    Wanted {
        why: "reading a caller's supplementary groups",
        strukt: "cred",
        path: &[&["group_info"]],
        set: |o, v| o.cred_group_info = v,
        get: |o| o.cred_group_info,
    },
    Wanted {
        why: "reading a caller's supplementary groups",
        strukt: "group_info",
        path: &[&["ngroups"]],
        set: |o, v| o.group_info_ngroups = v,
        get: |o| o.group_info_ngroups,
    },
    Wanted {
        why: "reading a caller's supplementary groups",
        strukt: "group_info",
        path: &[&["gid"]],
        set: |o, v| o.group_info_gid = v,
        get: |o| o.group_info_gid,
    },
    Wanted {
        why: "finding a caller's user namespace",
        strukt: "cred",
        path: &[&["user_ns"]],
        set: |o, v| o.cred_user_ns = v,
        get: |o| o.cred_user_ns,
    },
    Wanted {
        why: "finding the owners of a caller's user namespaces",
        strukt: "user_namespace",
        path: &[&["parent"]],
        set: |o, v| o.user_ns_parent = v,
        get: |o| o.user_ns_parent,
    },
    Wanted {
        why: "finding the owners of a caller's user namespaces",
        strukt: "user_namespace",
        path: &[&["owner"]],
        set: |o, v| o.user_ns_owner = v,
        get: |o| o.user_ns_owner,
    },
    Wanted {
        why: "telling the host's user namespace from a container's",
        strukt: "user_namespace",
        path: &[&["ns"], &["inum"]],
        set: |o, v| o.user_ns_inum = v,
        get: |o| o.user_ns_inum,
    },
    Wanted {
        why: "telling the host's pid namespace from a container's",
        strukt: "task_struct",
        path: &[&["thread_pid"]],
        set: |o, v| o.task_thread_pid = v,
        get: |o| o.task_thread_pid,
    },
    Wanted {
        why: "telling the host's pid namespace from a container's",
        strukt: "pid",
        path: &[&["level"]],
        set: |o, v| o.pid_level = v,
        get: |o| o.pid_level,
    },
    Wanted {
        why: "telling the host's pid namespace from a container's",
        strukt: "pid",
        path: &[&["numbers"]],
        set: |o, v| o.pid_numbers = v,
        get: |o| o.pid_numbers,
    },
    Wanted {
        why: "telling the host's pid namespace from a container's",
        strukt: "upid",
        path: &[],
        set: |o, v| o.upid_size = v,
        get: |o| o.upid_size,
    },
    Wanted {
        why: "telling the host's pid namespace from a container's",
        strukt: "upid",
        path: &[&["ns"]],
        set: |o, v| o.upid_ns = v,
        get: |o| o.upid_ns,
    },
    Wanted {
        why: "telling the host's pid namespace from a container's",
        strukt: "pid_namespace",
        path: &[&["ns"], &["inum"]],
        set: |o, v| o.pid_ns_inum = v,
        get: |o| o.pid_ns_inum,
    },
    Wanted {
        why: "telling the host's network namespace from a container's",
        strukt: "sock",
        path: &[&["__sk_common"], &["skc_net"], &["net"]],
        set: |o, v| o.sock_net = v,
        get: |o| o.sock_net,
    },
    Wanted {
        why: "telling the host's network namespace from a container's",
        strukt: "net",
        path: &[&["ns"], &["inum"]],
        set: |o, v| o.net_inum = v,
        get: |o| o.net_inum,
    },
    Wanted {
        why: "following a group deny into the user namespaces a member creates",
        strukt: "user_namespace",
        path: &[&["group"]],
        set: |o, v| o.user_ns_group = v,
        get: |o| o.user_ns_group,
    },
];

/// A field the running kernel does not have where the programs need it.
#[derive(Debug, thiserror::Error)]
#[error(
    "this kernel ({release}) does not describe {field} in its BTF, which the guard needs for \
     {why}; refusing to read it at a guessed offset"
)]
pub struct OffsetError {
    release: String,
    /// `sock.sk_socket`, `pid.level`, or `struct upid` for a size.
    field: String,
    why: &'static str,
    #[source]
    source: Box<BtfError>,
}

impl Wanted {
    /// How messages and `status` name it: `strukt.member` (alternatives
    /// as `a|b`), or `sizeof(struct strukt)`.
    fn name(&self) -> String {
        if self.path.is_empty() {
            return format!("sizeof(struct {})", self.strukt);
        }
        let members: Vec<String> = self.path.iter().map(|names| names.join("|")).collect();
        format!("{}.{}", self.strukt, members.join("."))
    }

    fn resolve(&self, btf: &Btf) -> Result<u32, BtfError> {
        if self.path.is_empty() {
            btf.struct_size(self.strukt)
        } else {
            btf.field(self.strukt, self.path).map(|f| f.offset)
        }
    }
}

/// Resolves every offset from `btf`, describing the kernel as `release`
/// (`uname -r`) in errors.
pub fn resolve(btf: &Btf, release: &str) -> Result<Offsets, OffsetError> {
    let mut offsets = Offsets {
        valid: Offsets::VALID,
        ..Offsets::default()
    };
    for w in WANTED {
        let value = w.resolve(btf).map_err(|source| OffsetError {
            release: release.to_owned(),
            field: if w.path.is_empty() {
                format!("struct {}", w.strukt)
            } else {
                w.name()
            },
            why: w.why,
            source: Box::new(source),
        })?;
        (w.set)(&mut offsets, value);
    }
    Ok(offsets)
}

/// The offsets the request programs read a TCP socket at (`request.rs`,
/// `judge.rs`), each from the start of `struct sock`, which a `tcp_sock`
/// starts with (through `inet_connection_sock` and `inet_sock`).
pub fn resolve_request(btf: &Btf, release: &str) -> Result<RequestOffsets, OffsetError> {
    let why = "judging the requests of callers allowed some requests";
    let field = |strukt: &'static str, path: &'static [&'static [&'static str]]| {
        btf.field(strukt, path)
            .map(|f| f.offset)
            .map_err(|source| OffsetError {
                release: release.to_owned(),
                field: format!(
                    "{strukt}.{}",
                    path.iter()
                        .map(|n| n.join("|"))
                        .collect::<Vec<_>>()
                        .join(".")
                ),
                why,
                source: Box::new(source),
            })
    };
    let bit = |member: &'static str| {
        btf.flag_bit("tcp_sock", member)
            .map_err(|source| OffsetError {
                release: release.to_owned(),
                field: format!("tcp_sock.{member}"),
                why,
                source: Box::new(source),
            })
    };
    let repair = bit("repair")?;
    let fastopen_connect = bit("fastopen_connect")?;
    Ok(RequestOffsets {
        valid: RequestOffsets::VALID,
        tcp_write_seq: field("tcp_sock", &[&["write_seq"]])?,
        sk_wmem_queued: field("sock", &[&["sk_wmem_queued"]])?,
        sk_sndbuf: field("sock", &[&["sk_sndbuf"]])?,
        sk_write_pending: field("sock", &[&["sk_write_pending"]])?,
        icsk_ulp_ops: field("inet_connection_sock", &[&["icsk_ulp_ops"]])?,
        tcp_fastopen_req: field("tcp_sock", &[&["fastopen_req"]])?,
        tcp_repair: repair.0,
        tcp_repair_mask: u32::from(repair.1),
        tcp_fastopen_connect: fastopen_connect.0,
        tcp_fastopen_connect_mask: u32::from(fastopen_connect.1),
        tcp_notsent_lowat: field("tcp_sock", &[&["notsent_lowat"]])?,
        net_tcp_notsent_lowat: field("net", &[&["ipv4"], &["sysctl_tcp_notsent_lowat"]])?,
        tcp_snd_una: field("tcp_sock", &[&["snd_una"]])?,
    })
}

/// The offsets the `forward` program reads a packet and its hook state at
/// (`kernel/netfilter/`), or the first field this kernel does not describe.
pub fn resolve_forward(btf: &Btf, release: &str) -> Result<ForwardOffsets, OffsetError> {
    let why = "reading forwarded packets in the forward program";
    let field = |strukt: &'static str, member: &'static str| {
        // `sk_buff.network_header` is inside the `headers` struct_group
        // (an anonymous struct) since 5.19: `field` looks through it.
        btf.field(strukt, &[&[member]])
            .map(|f| f.offset)
            .map_err(|source| OffsetError {
                release: release.to_owned(),
                field: format!("{strukt}.{member}"),
                why,
                source: Box::new(source),
            })
    };
    Ok(ForwardOffsets {
        valid: ForwardOffsets::VALID,
        skb_head: field("sk_buff", "head")?,
        skb_network_header: field("sk_buff", "network_header")?,
        skb_len: field("sk_buff", "len")?,
        skb_data_len: field("sk_buff", "data_len")?,
        state_pf: field("nf_hook_state", "pf")?,
        state_in: field("nf_hook_state", "in")?,
        dev_ifindex: field("net_device", "ifindex")?,
        dev_name: field("net_device", "name")?,
        _pad: 0,
    })
}

/// Every offset of `offsets` with the field it locates, in the order of
/// [`Offsets`], for `status`.
pub fn named(offsets: &Offsets) -> Vec<(String, u32)> {
    WANTED
        .iter()
        .map(|w| (w.name(), (w.get)(offsets)))
        .collect()
}

/// The running kernel's release (`uname -r`), for messages.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown release".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf::tests::Builder;

    /// The names a fake kernel gives the members the tests rename.
    struct Names {
        sock_socket: &'static str,
        ngroups: &'static str,
        upid: &'static str,
    }

    const REAL: Names = Names {
        sock_socket: "sk_socket",
        ngroups: "ngroups",
        upid: "upid",
    };

    /// Just the structures the programs read, with made-up offsets.
    fn fake_kernel(names: &Names) -> Btf {
        let mut b = Builder::new();
        let int = b.int("unsigned int", 4);
        let ptr = b.ptr(int);
        b.strukt(
            "task_struct",
            4096,
            &[
                ("flags", int, 32),
                ("pid", int, 8 * 1400),
                ("tgid", int, 8 * 1404),
                ("thread_pid", ptr, 8 * 1500),
                ("cred", ptr, 8 * 1600),
                // A char array in a real kernel: only its offset matters.
                ("comm", int, 8 * 1700),
            ],
        );
        b.strukt(
            "cred",
            160,
            &[
                ("usage", int, 0),
                ("uid", int, 32),
                ("gid", int, 64),
                ("user_ns", ptr, 8 * 136),
                ("group_info", ptr, 8 * 144),
            ],
        );
        b.strukt(
            "group_info",
            8,
            &[
                ("usage", int, 0),
                (names.ngroups, int, 32),
                ("gid", int, 64),
            ],
        );
        // `ns_common` embedded in each namespace, as in the kernel.
        let ns_common = b.strukt("ns_common", 24, &[("stashed", ptr, 0), ("inum", int, 128)]);
        b.strukt(
            "user_namespace",
            600,
            &[
                ("parent", ptr, 8 * 72),
                ("owner", int, 8 * 84),
                ("group", int, 8 * 88),
                ("ns", ns_common, 8 * 96),
            ],
        );
        b.strukt(
            "pid",
            112,
            &[
                ("count", int, 0),
                ("level", int, 32),
                ("numbers", int, 8 * 96),
            ],
        );
        b.strukt(names.upid, 16, &[("nr", int, 0), ("ns", ptr, 64)]);
        b.strukt("pid_namespace", 200, &[("ns", ns_common, 8 * 160)]);
        b.strukt("net", 4000, &[("ns", ns_common, 8 * 120)]);
        let possible_net = b.strukt("", 8, &[("net", ptr, 0)]);
        let possible_net = b.typedef("possible_net_t", possible_net);
        let common = b.strukt("sock_common", 136, &[("skc_net", possible_net, 8 * 48)]);
        b.strukt(
            "sock",
            800,
            &[
                ("__sk_common", common, 0),
                (names.sock_socket, ptr, 8 * 600),
            ],
        );
        b.strukt("socket", 128, &[("file", ptr, 8 * 16)]);
        b.strukt("file", 256, &[("f_cred", ptr, 8 * 96)]);
        Btf::parse(&b.build()).expect("well-formed")
    }

    #[test]
    fn every_offset_is_resolved_and_the_set_is_marked_valid() {
        let o = resolve(&fake_kernel(&REAL), "test").expect("resolves");
        assert_eq!(o.valid, Offsets::VALID);
        assert_eq!((o.task_flags, o.task_cred), (4, 1600));
        assert_eq!((o.cred_uid, o.cred_gid), (4, 8));
        assert_eq!((o.sock_socket, o.socket_file, o.file_cred), (600, 16, 96));
        assert_eq!((o.task_pid, o.task_tgid, o.task_comm), (1400, 1404, 1700));
        assert_eq!((o.cred_group_info, o.cred_user_ns), (144, 136));
        assert_eq!((o.group_info_ngroups, o.group_info_gid), (4, 8));
        assert_eq!(
            (o.user_ns_parent, o.user_ns_owner, o.user_ns_group),
            (72, 84, 88)
        );
        // Through the embedded `ns_common`: 96 + 16.
        assert_eq!(o.user_ns_inum, 112);
        assert_eq!(
            (o.task_thread_pid, o.pid_level, o.pid_numbers),
            (1500, 4, 96)
        );
        assert_eq!((o.upid_size, o.upid_ns), (16, 8));
        assert_eq!((o.pid_ns_inum, o.net_inum), (176, 136));
        // sock.__sk_common (0) .skc_net (48) .net (0), through a typedef.
        assert_eq!(o.sock_net, 48);
    }

    #[test]
    fn status_names_every_offset_with_its_value() {
        let o = resolve(&fake_kernel(&REAL), "test").expect("resolves");
        let named = named(&o);
        assert_eq!(named.len(), WANTED.len());
        let value = |name: &str| {
            named
                .iter()
                .find(|(n, _)| n == name)
                .map(|&(_, v)| v)
                .unwrap_or_else(|| panic!("{name} is not in {named:?}"))
        };
        assert_eq!(value("sock.__sk_common.skc_net.net"), 48);
        assert_eq!(value("sizeof(struct upid)"), 16);
        assert_eq!(value("cred.group_info"), 144);
    }

    #[test]
    fn a_renamed_member_refuses_and_says_which_and_why() {
        let renamed = Names {
            ngroups: "nr_groups",
            ..REAL
        };
        let e = resolve(&fake_kernel(&renamed), "6.99.0-test").expect_err("renamed");
        assert_eq!(
            e.to_string(),
            "this kernel (6.99.0-test) does not describe group_info.ngroups in its BTF, which \
             the guard needs for reading a caller's supplementary groups; refusing to read it \
             at a guessed offset"
        );
        assert_eq!(
            std::error::Error::source(&e).map(ToString::to_string),
            Some("struct group_info has no member named ngroups".to_owned())
        );
    }

    #[test]
    fn a_missing_struct_for_a_size_refuses_too() {
        let renamed = Names {
            upid: "upid_v2",
            ..REAL
        };
        let e = resolve(&fake_kernel(&renamed), "6.99.0-test").expect_err("no struct upid");
        assert_eq!(
            e.to_string(),
            "this kernel (6.99.0-test) does not describe struct upid in its BTF, which the guard \
             needs for telling the host's pid namespace from a container's; refusing to read it \
             at a guessed offset"
        );
    }

    #[test]
    fn a_missing_field_refuses_and_says_which_and_where() {
        let missing = Names {
            sock_socket: "sk_sock",
            ..REAL
        };
        let e = resolve(&fake_kernel(&missing), "6.99.0-test").expect_err("missing");
        assert_eq!(
            e.to_string(),
            "this kernel (6.99.0-test) does not describe sock.sk_socket in its BTF, which the \
             guard needs for finding a socket's owner; refusing to read it at a guessed offset"
        );
        assert_eq!(
            std::error::Error::source(&e).map(ToString::to_string),
            Some("struct sock has no member named sk_socket".to_owned())
        );
    }

    #[test]
    fn this_kernel_has_every_field_the_forward_program_reads() {
        let btf = Btf::from_sys_fs().expect("this kernel publishes its BTF");
        let off = resolve_forward(&btf, &kernel_release()).expect("every field is there");
        // `struct nf_hook_state { u8 hook; u8 pf; ... }`.
        assert_eq!(off.state_pf, 1);
        assert!(off.skb_head > off.skb_len, "{off:?}");
        assert_eq!(off.valid, ForwardOffsets::VALID);
    }

    #[test]
    fn this_kernel_has_every_field() {
        let btf = Btf::from_sys_fs().expect("this kernel publishes its BTF");
        let o = resolve(&btf, &kernel_release()).expect("every field is there");
        assert_eq!(o.valid, Offsets::VALID);
        assert!(o.task_cred > o.task_flags);
        // What the kernel's headers say of these, in every version since
        // 4.19: group_info is { refcount usage; int ngroups; kgid_t gid[] },
        // upid is { int nr; struct pid_namespace *ns }.
        assert_eq!((o.group_info_ngroups, o.group_info_gid), (4, 8));
        assert_eq!((o.upid_size, o.upid_ns), (16, 8));
        assert!(o.user_ns_inum > o.user_ns_owner && o.sock_net > 0);
        // `kuid_t owner; kgid_t group;` side by side, since 3.8.
        assert_eq!(o.user_ns_group, o.user_ns_owner + 4);
    }

    #[test]
    fn this_kernel_has_every_field_the_request_programs_read() {
        let btf = Btf::from_sys_fs().expect("this kernel publishes its BTF");
        let o = resolve_request(&btf, &kernel_release()).expect("every field is there");
        assert_eq!(o.valid, RequestOffsets::VALID);
        // A tcp_sock starts with the sock, then the TCP fields.
        assert!(o.tcp_write_seq > o.sk_sndbuf && o.icsk_ulp_ops > o.sk_write_pending);
        // One-bit fields: one bit of one byte each, in tcp_sock.
        for mask in [o.tcp_repair_mask, o.tcp_fastopen_connect_mask] {
            assert_eq!(mask.count_ones(), 1, "{o:?}");
            assert!(mask < 0x100, "{o:?}");
        }
        assert!(o.tcp_repair > o.sk_sndbuf && o.tcp_fastopen_connect > o.sk_sndbuf);
        assert!(o.tcp_notsent_lowat > o.sk_sndbuf && o.net_tcp_notsent_lowat > 0);
    }

    #[test]
    fn a_field_of_several_bits_is_no_flag() {
        let btf = Btf::from_sys_fs().expect("this kernel publishes its BTF");
        // `u8 nonagle : 4` in tcp_sock since 2.6.
        assert!(btf.flag_bit("tcp_sock", "nonagle").is_err());
        assert!(btf.flag_bit("tcp_sock", "no_such_member").is_err());
    }
}
