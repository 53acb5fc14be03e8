//! The offsets the programs read a caller's identity with, resolved from
//! the running kernel's BTF (`btf.rs`) into [`Offsets`], which the loader
//! writes into the programs before they load.
//!
//! Each field lists the names it has had across kernel versions; the first
//! one the kernel has wins. A kernel that has none of them is refused with
//! a message naming the field and the kernel: the programs never read
//! memory at a guessed place.

use imds_guard_common::Offsets;

use super::btf::{Btf, BtfError};

/// One field the programs read: where it is described, and how to find it.
struct Wanted {
    /// What it is for, in the error message.
    why: &'static str,
    strukt: &'static str,
    path: &'static [&'static [&'static str]],
    set: fn(&mut Offsets, u32),
}

/// Every field, in the order of [`Offsets`].
const WANTED: &[Wanted] = &[
    Wanted {
        why: "telling kernel threads from processes",
        strukt: "task_struct",
        path: &[&["flags"]],
        set: |o, v| o.task_flags = v,
    },
    Wanted {
        why: "reading a task's credentials",
        strukt: "task_struct",
        path: &[&["cred"]],
        set: |o, v| o.task_cred = v,
    },
    Wanted {
        why: "reading the real uid",
        strukt: "cred",
        path: &[&["uid"]],
        set: |o, v| o.cred_uid = v,
    },
    Wanted {
        why: "reading the real gid",
        strukt: "cred",
        path: &[&["gid"]],
        set: |o, v| o.cred_gid = v,
    },
    Wanted {
        why: "finding a socket's owner",
        strukt: "sock",
        path: &[&["sk_socket"]],
        set: |o, v| o.sock_socket = v,
    },
    Wanted {
        why: "finding a socket's owner",
        strukt: "socket",
        path: &[&["file"]],
        set: |o, v| o.socket_file = v,
    },
    Wanted {
        why: "finding a socket's owner",
        strukt: "file",
        path: &[&["f_cred"]],
        set: |o, v| o.file_cred = v,
    },
    Wanted {
        why: "naming the process whose packet leaves",
        strukt: "task_struct",
        path: &[&["pid"]],
        set: |o, v| o.task_pid = v,
    },
    Wanted {
        why: "naming the process whose packet leaves",
        strukt: "task_struct",
        path: &[&["tgid"]],
        set: |o, v| o.task_tgid = v,
    },
    Wanted {
        why: "naming the process whose packet leaves",
        strukt: "task_struct",
        path: &[&["comm"]],
        set: |o, v| o.task_comm = v,
    },
];

/// A field the running kernel does not have where the programs need it.
#[derive(Debug, thiserror::Error)]
#[error(
    "this kernel ({release}) does not describe {strukt}.{field} in its BTF, which the guard needs \
     for {why}; refusing to read it at a guessed offset"
)]
pub struct OffsetError {
    release: String,
    strukt: &'static str,
    field: String,
    why: &'static str,
    #[source]
    source: Box<BtfError>,
}

/// Resolves every offset from `btf`, describing the kernel as `release`
/// (`uname -r`) in errors.
pub fn resolve(btf: &Btf, release: &str) -> Result<Offsets, OffsetError> {
    let mut offsets = Offsets {
        valid: Offsets::VALID,
        ..Offsets::default()
    };
    for w in WANTED {
        let field = btf.field(w.strukt, w.path).map_err(|source| OffsetError {
            release: release.to_owned(),
            strukt: w.strukt,
            field: w
                .path
                .iter()
                .map(|names| names.join("|"))
                .collect::<Vec<_>>()
                .join("."),
            why: w.why,
            source: Box::new(source),
        })?;
        (w.set)(&mut offsets, field.offset);
    }
    Ok(offsets)
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

    /// Just the structures the programs read, with made-up offsets.
    fn fake_kernel(sock_socket: &str) -> Btf {
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
                ("cred", ptr, 8 * 1600),
                // A char array in a real kernel: only its offset matters.
                ("comm", int, 8 * 1700),
            ],
        );
        b.strukt(
            "cred",
            160,
            &[("usage", int, 0), ("uid", int, 32), ("gid", int, 64)],
        );
        b.strukt("sock", 800, &[(sock_socket, ptr, 8 * 600)]);
        b.strukt("socket", 128, &[("file", ptr, 8 * 16)]);
        b.strukt("file", 256, &[("f_cred", ptr, 8 * 96)]);
        Btf::parse(&b.build()).expect("well-formed")
    }

    #[test]
    fn every_offset_is_resolved_and_the_set_is_marked_valid() {
        let o = resolve(&fake_kernel("sk_socket"), "test").expect("resolves");
        assert_eq!(o.valid, Offsets::VALID);
        assert_eq!((o.task_flags, o.task_cred), (4, 1600));
        assert_eq!((o.cred_uid, o.cred_gid), (4, 8));
        assert_eq!((o.sock_socket, o.socket_file, o.file_cred), (600, 16, 96));
        assert_eq!((o.task_pid, o.task_tgid, o.task_comm), (1400, 1404, 1700));
    }

    #[test]
    fn a_missing_field_refuses_and_says_which_and_where() {
        let e = resolve(&fake_kernel("sk_sock"), "6.99.0-test").expect_err("missing");
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
    fn this_kernel_has_every_field() {
        let btf = Btf::from_sys_fs().expect("this kernel publishes its BTF");
        let o = resolve(&btf, &kernel_release()).expect("every field is there");
        assert_eq!(o.valid, Offsets::VALID);
        assert!(o.task_cred > o.task_flags);
    }
}
