//! `req_msg`, the `sk_msg` verdict program attached to `REQ_SOCKS`
//! (`request.rs` puts judged sockets there): it judges every message such
//! a socket sends before it reaches TCP, and moves the socket's judged
//! range past what it lets through (`egress` drops payload outside it).
//! Only in the build with `bpf_loop`: the parser runs under it.

use aya_ebpf::{
    bindings::{bpf_sock, sk_action, sk_msg_md},
    btf_maps::SkStorage,
    cty::c_void,
    helpers::generated::{bpf_loop, bpf_msg_cork_bytes, bpf_msg_pull_data, bpf_probe_read_kernel},
    macros::{btf_map, sk_msg},
    maps::lpm_trie::Key,
    programs::SkMsgContext,
};
use imds_guard_common::{
    Finish, HEAD_MAX, JUDGED_RING, Parser, ReqKey, SockState, Step, entry_flags, req_reason,
    req_version, stage,
};

use crate::{
    dst::active_generation,
    judged_bytes,
    kernel::{address_of, offsets, read, read_ptr},
    maps::REQ_RULES,
    req_record::{Judgement, settle},
    request::{judged, request_offsets},
    sock_state::{CREATE, epoch, state_of, storage_of},
};

/// The longest message (a request head) `req_msg` judges.
pub const MAX_HEAD: u32 = HEAD_MAX as u32;
const _: () = assert!(MAX_HEAD.is_power_of_two());

/// `req_msg`'s [`Scratch`], one per judged socket (socket storage): the
/// program runs under the socket's lock, so nothing else writes it while
/// a head is judged. Per CPU it was not private enough: `sk_msg` programs
/// run with migration disabled, not preemption, and on a kernel that
/// preempts (`preempt=full`, RT) another task's run on the same CPU could
/// overwrite the parser's state or the copy between the parse and
/// `judged_bytes::keep`.
#[btf_map]
static REQ_SCRATCH: SkStorage<Scratch> = SkStorage::new();

/// The scratch of the full socket `sk`, made on first use; null when it
/// cannot be (the head is then refused).
#[inline(always)]
fn scratch_of(sk: *mut bpf_sock) -> *mut Scratch {
    // SAFETY: `sk` is the message's full socket.
    unsafe { storage_of(&REQ_SCRATCH, sk, CREATE) }
}

/// The sending full socket of message `msg` (null for none).
#[inline(always)]
fn sock_of(msg: *mut sk_msg_md) -> *mut bpf_sock {
    // SAFETY: the program's own context, one field read at its offset.
    unsafe { core::ptr::read_volatile(&raw const (*msg).__bindgen_anon_3.sk) }
}

/// What [`judge_head`] says of a message.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Judged {
    /// One complete, canonical request head the rules allow, ending at the
    /// end of the message.
    Pass,
    /// A head not complete yet: wait for more (corked).
    More,
    /// Refused.
    Refuse,
}

/// The `sk_msg` verdict program attached to [`REQ_SOCKS`]: every message a
/// judged socket sends (`sendmsg`, `writev`, `sendfile`, `splice`,
/// io_uring sends) comes here before it reaches TCP. `SK_PASS` only for a
/// message this program judged and allowed, whose bytes then extend the
/// judged range; anything else is `SK_DROP` (the sender gets `EACCES`,
/// and the kernel drops every later message of the socket too).
#[sk_msg]
pub fn req_msg(ctx: SkMsgContext) -> u32 {
    if try_req_msg(&ctx) {
        sk_action::SK_PASS
    } else {
        sk_action::SK_DROP
    }
}

#[inline(always)]
fn try_req_msg(ctx: &SkMsgContext) -> bool {
    let sk = sock_of(ctx.msg);
    if sk.is_null() {
        return false;
    }
    // SAFETY: a full socket (one in a sockhash).
    let state = unsafe { state_of(sk, 0) };
    if state.is_null() {
        return false;
    }
    // SAFETY: checked for null; this socket's storage, valid for this run
    // (the program runs under the socket's lock, as `egress` may not: the
    // range only grows, and `egress` reads it whole per packet).
    let s: SockState = unsafe { *state };
    let size = ctx.size();
    // Bytes reached the stream other than through this verdict: a plain
    // path writer, a partial push. Nothing more is judged on it.
    let write_seq = match written(sk) {
        Some(seq)
            if s.stage & stage::TAINTED == 0
                && s.stage & stage::IN_SOCKHASH != 0
                && seq == s.judged_end =>
        {
            seq
        }
        _ => {
            taint(state);
            return refuse(ctx, &s, req_reason::TAINTED);
        }
    };
    if s.stage & stage::POISONED != 0 {
        // Refused before, and recorded then.
        return false;
    }
    // Let through under another policy: the rules may have changed, and
    // the next request is refused (a reload cuts a judged connection as it
    // cuts a refused one; the client reconnects under the new rules). So
    // for an attributed one: the new policy may judge its caller, and its
    // scope was read at connect. One reading of the generation for the
    // epoch and the rules: read again for the lookup, a reload between the
    // two would judge the socket's rule set number (the old policy's) by
    // the new policy's rule set of that number.
    let generation = active_generation();
    if epoch(generation) != Some(s.epoch) {
        poison(state);
        return refuse(ctx, &s, req_reason::STALE);
    }
    if !judged(s.flags) {
        // Whole service (attributed): let through, recorded.
        return attributed(ctx, state, &s, write_seq, size, generation);
    }
    if size == 0 || size > MAX_HEAD {
        poison(state);
        return refuse(ctx, &s, req_reason::HEAD_TOO_LONG);
    }
    if !room(sk, size) {
        poison(state);
        return refuse(ctx, &s, req_reason::MEMORY);
    }
    // The whole message in one place the program may read, and a private
    // copy of what `sendfile`/`splice` handed over by page (6.1): what is
    // judged is what is sent.
    // SAFETY: the program's own context.
    if unsafe { bpf_msg_pull_data(ctx.msg.cast(), 0, size, 0) } != 0 {
        poison(state);
        return refuse(ctx, &s, req_reason::PULL_FAILED);
    }
    let mut j = Judgement::refused(req_reason::NONE);
    match judge_head(ctx, sk, &s, size, generation, &mut j) {
        Judged::Pass => {
            // What `egress` will let leave: the bytes judged, kept before
            // the range moves past them.
            let at = write_seq.wrapping_sub(s.base_seq);
            // SAFETY: a full socket; the scratch buffer holds the `size`
            // bytes the parser judged (`judge_head`).
            let scratch = scratch_of(sk);
            let kept = !scratch.is_null()
                && unsafe { judged_bytes::keep(sk, at, (&raw const (*scratch).buf).cast(), size) };
            if !kept {
                poison(state);
                j.pass = false;
                j.reason = req_reason::NOT_KEPT;
                record(ctx, &j, s.requests, true);
                return false;
            }
            passed(state, write_seq, size);
            j.pass = true;
            record(ctx, &j, s.requests, true);
            true
        }
        Judged::More => {
            // Wait for the rest: the kernel keeps the message and runs us
            // again on all of it. SK_DROP meanwhile: where it cannot keep
            // it (its scatterlist full), what applies is the drop.
            // SAFETY: the program's own context.
            unsafe { bpf_msg_cork_bytes(ctx.msg.cast(), size + 1) };
            false
        }
        Judged::Refuse => {
            poison(state);
            record(ctx, &j, s.requests, true);
            false
        }
    }
}

/// A refusal of the socket in state `s` for `reason`, before its request
/// was read: recorded unless the socket was refused before (a refusal is
/// sticky, and was recorded then). Always `false`.
#[inline(always)]
fn refuse(ctx: &SkMsgContext, s: &SockState, reason: u8) -> bool {
    if s.stage & stage::POISONED == 0 {
        record(ctx, &Judgement::refused(reason), s.requests, false);
    }
    false
}

/// Counts, adds to the census and (within the budget) records `j`, a
/// request of the socket that sent `ctx`, which it had been let through
/// `requests` times before; `path`: the parser's path belongs to it.
/// Through [`imds_guard_request_record`], which the verifier walks once.
#[inline(always)]
fn record(ctx: &SkMsgContext, j: &Judgement, requests: u16, path: bool) {
    let what = u64::from(j.pass)
        | u64::from(j.reason) << 8
        | u64::from(j.version) << 16
        | u64::from(j.method) << 24
        | u64::from(j.http_minor) << 32
        | u64::from(path) << 40
        | u64::from(j.path_len) << 48;
    imds_guard_request_record(ctx.msg, what, j.rule, u32::from(requests));
}

/// [`record`]'s body: a global function (BTF linkage global, as
/// `#[no_mangle]` makes it), as `backstop::imds_guard_backstop` is. The
/// verifier walks it once, on its own, with arguments it knows nothing of
/// (the record bounds each field itself), rather than once per state each
/// of `req_msg`'s verdicts ends in: inlined, 6.1 walked `req_msg` in
/// 155,000 instructions. Its arguments are the context and scalars: the
/// judgement packed in `what` (as [`record`] packs it), the rule, the
/// requests let through before. Always 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imds_guard_request_record(
    msg: *mut sk_msg_md,
    what: u64,
    rule: u32,
    requests: u32,
) -> i32 {
    let sk = sock_of(msg);
    if sk.is_null() {
        return 0;
    }
    // SAFETY: a full socket (one in a sockhash).
    let state = unsafe { state_of(sk, 0) };
    if state.is_null() {
        return 0;
    }
    // SAFETY: checked for null; this socket's storage, valid for this run.
    let s: SockState = unsafe { *state };
    let j = Judgement {
        pass: what & 0xff != 0,
        reason: (what >> 8) as u8,
        version: (what >> 16) as u8,
        method: (what >> 24) as u8,
        http_minor: (what >> 32) as u8,
        path_len: (what >> 48) as u16,
        rule,
    };
    let path = if (what >> 40) & 0xff != 0 {
        scratch_path(sk)
    } else {
        core::ptr::null()
    };
    settle(msg, &s, requests as u16, &j, path);
    0
}

/// A request of a caller allowed the whole service, recorded
/// (`[attribution] whole_service`): parsed as a judged one is, never
/// refused for what it asks. What the parser cannot read (not canonical,
/// split over writes, longer than [`MAX_HEAD`]) leaves as it is, recorded
/// as `UNPARSED` with the parser's reason.
#[inline(always)]
fn attributed(
    ctx: &SkMsgContext,
    state: *mut SockState,
    s: &SockState,
    write_seq: u32,
    size: u32,
    generation: u32,
) -> bool {
    let mut j = Judgement::refused(req_reason::HEAD_TOO_LONG);
    let mut path = core::ptr::null();
    // SAFETY: the program's own context.
    if size > 0 && size <= MAX_HEAD && unsafe { bpf_msg_pull_data(ctx.msg.cast(), 0, size, 0) } == 0
    {
        j.reason = req_reason::NONE;
        let sk = sock_of(ctx.msg);
        if !sk.is_null() {
            judge_head(ctx, sk, s, size, generation, &mut j);
            path = scratch_path(sk);
        }
    }
    j.pass = true;
    passed(state, write_seq, size);
    record(ctx, &j, s.requests, !path.is_null());
    true
}

/// The path bytes the parser read last for the full socket `sk` (null
/// without its scratch).
#[inline(always)]
fn scratch_path(sk: *mut bpf_sock) -> *const u8 {
    let scratch = scratch_of(sk);
    if scratch.is_null() {
        return core::ptr::null();
    }
    // SAFETY: the socket's storage, for this run.
    unsafe { (&raw const (*scratch).parser.lookup.key.path).cast() }
}

/// Where `req_msg` parses: the parser's state and a copy of the message,
/// in a map value (the socket's storage), so that the `bpf_loop` callback that steps the
/// parser sees them as memory it must not assume anything of (one walk of
/// the callback by the verifier, whatever the bytes).
#[repr(C)]
pub struct Scratch {
    pub parser: Parser,
    pub buf: [u8; MAX_HEAD as usize],
}

/// What the `bpf_loop` callback is handed.
#[repr(C)]
struct Walk {
    scratch: *mut Scratch,
}

/// One byte of the message through the parser: the `bpf_loop` callback.
/// Stops (1) at a refusal; the end of a head is not a stop (a byte after
/// it is a refusal, `TRAILING`).
extern "C" fn step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `Walk`, live for the whole loop; its
    // `scratch` is the socket's storage, checked for null by the caller.
    let scratch = unsafe { &mut *(*ctx.cast::<Walk>()).scratch };
    let b = scratch.buf[(index as usize) & (MAX_HEAD as usize - 1)];
    match scratch.parser.step(b) {
        Step::Refused(_) => 1,
        Step::Continue | Step::Done(_) => 0,
    }
}

/// Judges the request head of `size` bytes (at most [`MAX_HEAD`]) in the
/// message, pulled, so whole between `data` and `data_end`, for the socket
/// in state `s`: the canonical parser over every byte, then, for a caller
/// with a rule set, one lookup of the path in [`REQ_RULES`] under policy
/// `generation` (the one whose epoch the socket holds). `j` says what was
/// read (method, version, path length, rule) and why a refusal.
#[inline(always)]
fn judge_head(
    ctx: &SkMsgContext,
    sk: *mut bpf_sock,
    s: &SockState,
    size: u32,
    generation: u32,
    j: &mut Judgement,
) -> Judged {
    let scratch = scratch_of(sk);
    if scratch.is_null() {
        j.reason = req_reason::PULL_FAILED;
        return Judged::Refuse;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data == 0 || data + size as usize > end || size == 0 || size > MAX_HEAD {
        j.reason = req_reason::PULL_FAILED;
        return Judged::Refuse;
    }
    // The same size, bounded where the helper takes it: 6.1's verifier
    // loses the bound above once the value is spilled ("R2 unbounded
    // memory access"); for 1..=MAX_HEAD this is the identity.
    let size = ((size - 1) & (MAX_HEAD - 1)) + 1;
    // SAFETY: `scratch` is the socket's storage, ours for this run (the
    // program runs under the socket's lock); the helper copies `size`
    // bytes, at most its buffer's, from the message it reads cleanly or
    // fails.
    let copied = unsafe {
        (*scratch).parser.reset();
        bpf_probe_read_kernel(
            (&raw mut (*scratch).buf).cast(),
            size,
            data as *const c_void,
        )
    };
    if copied != 0 {
        j.reason = req_reason::PULL_FAILED;
        return Judged::Refuse;
    }
    let mut walk = Walk { scratch };
    // SAFETY: `step` has the callback's signature; `walk` lives on this
    // frame for the whole loop.
    let ran = unsafe { bpf_loop(size, step as *mut c_void, (&raw mut walk).cast(), 0) };
    // SAFETY: as above.
    let parser = unsafe { &mut (*scratch).parser };
    j.method = parser.method();
    j.path_len = parser.path_len();
    if ran < 0 {
        j.reason = req_reason::PULL_FAILED;
        return Judged::Refuse;
    }
    let head = match parser.finish() {
        Finish::Head(head) => head,
        Finish::Incomplete if size < MAX_HEAD => {
            j.reason = req_reason::INCOMPLETE;
            return Judged::More;
        }
        Finish::Incomplete => {
            j.reason = req_reason::HEAD_TOO_LONG;
            return Judged::Refuse;
        }
        Finish::Refused(reason) => {
            j.reason = reason;
            return Judged::Refuse;
        }
    };
    j.version = head.version;
    j.http_minor = head.http_minor;
    if s.flags & entry_flags::V2_REQUIRED != 0 && head.version == req_version::V1 {
        j.reason = req_reason::V1_REFUSED;
        return Judged::Refuse;
    }
    if s.flags & entry_flags::JUDGE == 0 {
        // IMDSv2 required of a caller with the whole service (or nothing
        // required of an attributed one): canonical, and with the token,
        // is all it takes.
        return Judged::Pass;
    }
    parser.set_scope(generation as u8, s.ruleset);
    // SAFETY: `ReqLookup` is laid out as aya's `Key<ReqKey>` (the prefix
    // length, then the data), and lives in the map value for this run.
    let key = unsafe { &*(&raw const parser.lookup).cast::<Key<ReqKey>>() };
    match REQ_RULES.get(key) {
        Some(rule) => {
            j.rule = rule.rule;
            Judged::Pass
        }
        None => {
            j.reason = req_reason::NOT_IN_RULES;
            Judged::Refuse
        }
    }
}

/// `tcp_sock.write_seq` of the full socket `sk`.
#[inline(always)]
fn written(sk: *mut bpf_sock) -> Option<u32> {
    let off = request_offsets()?;
    read::<u32>(address_of(sk)?, off.tcp_write_seq)
}

/// Mitigation (a) of the design's risk R1: a message that could make the
/// push wait for memory (releasing the socket lock mid-message, where a
/// plain-path writer could slip bytes inside the range) is refused. The
/// push waits when the queue reaches the send buffer (kept to half of it
/// here), and when the bytes not yet sent reach the socket's
/// `TCP_NOTSENT_LOWAT` (`tcp_stream_memory_free`): an option any caller
/// may set to one byte, or its namespace's `net.ipv4.tcp_notsent_lowat`
/// (by default the largest value), so the queue (which holds every byte
/// not yet sent) and the message must stay below it. It makes a wait
/// rarer, not impossible (a failed memory charge, a small `TCP_MAXSEG`
/// with `MSG_OOB`): what closes the race is that `egress` sends only the
/// bytes judged (`judged_bytes.rs`). And the bytes not acknowledged, with
/// this head, must fit in what a socket keeps of them.
#[inline(always)]
fn room(sk: *mut bpf_sock, size: u32) -> bool {
    let (Some(off), Some(addr)) = (request_offsets(), address_of(sk)) else {
        return false;
    };
    // Every byte not acknowledged yet, and this head, must stay kept
    // (`judged_bytes.rs`), for `egress` to compare retransmissions too.
    let unacked = match (
        read::<u32>(addr, off.tcp_write_seq),
        read::<u32>(addr, off.tcp_snd_una),
    ) {
        (Some(w), Some(u)) => w.wrapping_sub(u),
        _ => return false,
    };
    if unacked > JUDGED_RING || unacked + size > JUDGED_RING {
        return false;
    }
    let queued = read::<i32>(addr, off.sk_wmem_queued);
    let sndbuf = read::<i32>(addr, off.sk_sndbuf);
    let lowat = match read::<u32>(addr, off.tcp_notsent_lowat) {
        Some(0) => offsets()
            .and_then(|o| read_ptr(addr, o.sock_net))
            .and_then(|net| read::<u32>(net, off.net_tcp_notsent_lowat)),
        own => own,
    };
    match (queued, sndbuf, lowat) {
        (Some(q), Some(b), Some(l)) if q >= 0 && b > 0 => {
            let used = (q as u32).saturating_add(size);
            used <= (b as u32) / 2 && used < l
        }
        _ => false,
    }
}

#[inline(always)]
fn passed(state: *mut SockState, write_seq: u32, size: u32) {
    // SAFETY: the caller's non-null storage pointer, valid for this run.
    unsafe {
        (*state).judged_end = write_seq.wrapping_add(size);
        (*state).requests = (*state).requests.saturating_add(1);
    }
}

#[inline(always)]
fn poison(state: *mut SockState) {
    // SAFETY: as in `passed`.
    unsafe { (*state).stage |= stage::POISONED };
}

#[inline(always)]
fn taint(state: *mut SockState) {
    // SAFETY: as in `passed`.
    unsafe { (*state).stage |= stage::TAINTED | stage::POISONED };
}
