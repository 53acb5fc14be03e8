//! What `req_msg` leaves behind of each request it judges (design §6),
//! and `req_sockops` of each socket it could not put in the sockhash:
//! a count by version and verdict (and by reason for a refusal) in
//! [`REQ_COUNTERS`], one add to the census [`REQ_USAGE`], and a
//! [`RequestEvent`] in the events ring for every refusal and for the first
//! [`RECORDED_PER_SOCKET`] requests a socket is let through.
//!
//! A record carries the path as the parser read it (the only bytes of a
//! request the parser keeps), never a header value: the token never
//! reaches the ring.

#[cfg(not(feature = "unrolled"))]
use aya_ebpf::{bindings::sk_msg_md, helpers::generated::bpf_get_current_pid_tgid};
use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_ktime_get_ns, bpf_probe_read_kernel},
};
#[cfg(not(feature = "unrolled"))]
use imds_guard_common::req_hook;
use imds_guard_common::{
    EVENTS_BYTE_SIZE, PATH_MAX, RECORDED_PER_SOCKET, RequestEvent, SockState, Usage, UsageKey,
    family, kind, req_counter, verdict,
};

use crate::{
    dst::active_generation,
    maps::{EVENTS, REQ_COUNTERS, REQ_USAGE},
};

/// Wake the agent once the ring is a quarter full, as `decide.rs` does.
const WAKEUP_AT: u64 = (EVENTS_BYTE_SIZE / 4) as u64;
/// `bpf_ringbuf_submit`/`query` flags and `BPF_NOEXIST`
/// (include/uapi/linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_NOEXIST: u64 = 1;
/// `AF_INET6` in `sk_msg_md.family`.
const AF_INET6: u32 = 10;

/// Where the request went, as a record says it.
pub struct Dst {
    /// [`family`].
    pub family: u8,
    /// Network byte order; IPv4 in the first four bytes.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
}

impl Dst {
    /// From a socket's `family`, `remote_ip4`, `remote_ip6` and
    /// `remote_port` as `sk_msg_md` and `bpf_sock_ops` give them.
    #[inline(always)]
    pub fn of(fam: u32, ip4: u32, ip6: [u32; 4], port: u32) -> Self {
        let mut addr = [0u8; 16];
        let family = if fam == AF_INET6 {
            let mut i = 0;
            while i < 4 {
                let w = ip6[i].to_ne_bytes();
                addr[i * 4] = w[0];
                addr[i * 4 + 1] = w[1];
                addr[i * 4 + 2] = w[2];
                addr[i * 4 + 3] = w[3];
                i += 1;
            }
            family::INET6
        } else {
            let w = ip4.to_ne_bytes();
            addr[0] = w[0];
            addr[1] = w[1];
            addr[2] = w[2];
            addr[3] = w[3];
            family::INET
        };
        // The port, network byte order, in the low 16 bits, or shifted to
        // the high ones as some kernels give it: a port is never 0.
        let port = if port >> 16 != 0 {
            u16::from_be((port >> 16) as u16)
        } else {
            u16::from_be(port as u16)
        };
        Self { family, addr, port }
    }

    /// The destination of the message `msg`.
    #[cfg(not(feature = "unrolled"))]
    #[inline(always)]
    pub fn of_msg(msg: *mut sk_msg_md) -> Self {
        // SAFETY: the program's own context, read as the verifier lets a
        // program read it (one field at a time).
        unsafe {
            Self::of(
                core::ptr::read_volatile(&raw const (*msg).family),
                core::ptr::read_volatile(&raw const (*msg).remote_ip4),
                [
                    core::ptr::read_volatile(&raw const (*msg).remote_ip6[0]),
                    core::ptr::read_volatile(&raw const (*msg).remote_ip6[1]),
                    core::ptr::read_volatile(&raw const (*msg).remote_ip6[2]),
                    core::ptr::read_volatile(&raw const (*msg).remote_ip6[3]),
                ],
                core::ptr::read_volatile(&raw const (*msg).remote_port),
            )
        }
    }
}

/// One judged request, as the record and the counters say it.
pub struct Judgement {
    /// Let through.
    pub pass: bool,
    /// [`imds_guard_common::req_reason`]; `NONE` for a request let
    /// through whole (or the parser's reason for an attributed request
    /// let through unparsed).
    pub reason: u8,
    /// [`imds_guard_common::req_version`].
    pub version: u8,
    pub method: u8,
    pub http_minor: u8,
    /// Bytes of the path read (in `path`).
    pub path_len: u16,
    /// The matching rule (1-based), 0 for none.
    pub rule: u32,
}

impl Judgement {
    /// A refusal before anything of the request was read.
    #[inline(always)]
    pub const fn refused(reason: u8) -> Self {
        Self {
            pass: false,
            reason,
            version: 0,
            method: 0,
            http_minor: 0xff,
            path_len: 0,
            rule: 0,
        }
    }
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(c) = REQ_COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU array slot of this CPU; the program runs with
        // migration disabled, so no other writer races with us.
        unsafe { *c += 1 };
    }
}

/// Counts `j` for the socket in state `s` (`requests`: what it was let
/// through before this one), adds it to the census, and records it when
/// the budget allows: every refusal, the first [`RECORDED_PER_SOCKET`]
/// requests let through. `path` holds the path bytes the parser read.
#[cfg(not(feature = "unrolled"))]
#[inline(always)]
pub fn settle(msg: *mut sk_msg_md, s: &SockState, requests: u16, j: &Judgement, path: *const u8) {
    // SAFETY: a helper without preconditions.
    let sender = unsafe { bpf_get_current_pid_tgid() };
    let at = At {
        dst: Dst::of_msg(msg),
        hook: req_hook::REQUEST,
        sender,
    };
    settle_to(&at, s, requests, j, path);
}

/// Where a record comes from: the destination, the hook
/// ([`req_hook`]), the sender (`pid_tgid`; 0 for none: `sock_ops` runs
/// for the socket, not for a sender).
pub struct At {
    pub dst: Dst,
    pub hook: u8,
    pub sender: u64,
}

/// [`settle`] for a record from `at`.
#[inline(always)]
pub fn settle_to(at: &At, s: &SockState, requests: u16, j: &Judgement, path: *const u8) {
    bump(req_counter::by_version(j.version, !j.pass));
    if !j.pass {
        bump(req_counter::by_reason(j.reason));
    }
    let v = if j.pass {
        verdict::ALLOWED
    } else {
        verdict::DENIED
    };
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    census(s, j.version, v, now);
    if j.pass && requests >= RECORDED_PER_SOCKET {
        return;
    }
    emit(at, s, j, v, now, path);
}

/// One add to this CPU's count of the census entry of this caller, kind
/// and verdict (a per-CPU value: no atomic, no other writer; the agent
/// sums the CPUs).
#[inline(always)]
fn census(s: &SockState, version: u8, v: u8, now: u64) {
    let key = UsageKey {
        cgroup_id: s.cgroup_id,
        uid: s.uid,
        entry: s.entry,
        version,
        verdict: v,
        _pad: [0; 6],
    };
    if let Some(u) = REQ_USAGE.get_ptr_mut(key) {
        // SAFETY: this CPU's value of the entry, valid for this run (an
        // LRU entry is freed after an RCU grace period); the program runs
        // with migration disabled, so no other writer races with us.
        unsafe {
            (*u).count += 1;
            (*u).last_ns = now;
        }
        return;
    }
    // A new entry: this CPU's value 1, the others' 0 (another CPU making
    // it first only loses this one count).
    let first = Usage {
        count: 1,
        last_ns: now,
    };
    let _ = REQ_USAGE.insert(key, first, BPF_NOEXIST);
}

#[inline(always)]
fn emit(at: &At, s: &SockState, j: &Judgement, v: u8, now: u64, path: *const u8) {
    let Some(mut entry) = EVENTS.reserve::<RequestEvent>(0) else {
        bump(req_counter::RECORDS_LOST);
        return;
    };
    let e = entry.as_mut_ptr();
    let path_len = if j.path_len > PATH_MAX {
        PATH_MAX
    } else {
        j.path_len
    };
    // SAFETY: `e` is the record just reserved, as large and as aligned as
    // a `RequestEvent` and ours until submitted; written field by field in
    // place (a record on the stack would cost 320 of its 512 bytes).
    unsafe {
        (*e).ts_ns = now;
        (*e).cgroup_id = s.cgroup_id;
        (*e).tid = at.sender as u32;
        (*e).tgid = s.tgid;
        (*e).uid = s.uid;
        (*e).gid = s.gid;
        (*e).entry = s.entry;
        (*e).port = at.dst.port;
        (*e).hook = at.hook;
        (*e).verdict = v;
        (*e).reason = j.reason;
        (*e).generation = active_generation() as u8;
        (*e).kind = kind::REQUEST;
        (*e).family = at.dst.family;
        (*e).addr = at.dst.addr;
        (*e).method = j.method;
        (*e).version = j.version;
        (*e).http_minor = j.http_minor;
        (*e).namespaces = s.ns;
        (*e).rule = j.rule;
        (*e).sender_tgid = (at.sender >> 32) as u32;
        (*e).ruleset = s.ruleset;
        (*e).path_len = 0;
        (*e).path = [0; PATH_MAX as usize];
        (*e)._pad = [0; 4];
        // The path bytes read, and nothing after them (the parser's buffer
        // holds older paths there). 1..=PATH_MAX, bounded where the
        // helper takes it.
        if path_len > 0 && !path.is_null() {
            let n = ((u32::from(path_len) - 1) & 0xff) + 1;
            let n = if n > u32::from(PATH_MAX) {
                u32::from(PATH_MAX)
            } else {
                n
            };
            if bpf_probe_read_kernel((&raw mut (*e).path).cast(), n, path.cast::<c_void>()) == 0 {
                (*e).path_len = n as u16;
            }
        }
    }
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_AT {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags);
}
