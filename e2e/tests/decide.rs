//! Every case of the decision's table (`imds_guard::policy::cases`)
//! through the loaded programs: a probe with the case's ids and groups, in
//! user namespaces its owners created, on the host or in a container's
//! network namespace, in a cgroup where the case puts it, connects to the
//! metadata address; the record the programs send must carry the case's
//! verdict, reason, entry and decider. The unit tests hold the twin
//! (`Policy::decide_process`) to the same table, so the two decide alike
//! case by case, not only allowed or denied.
//!
//! The programs are driven in-process (as `kernel.rs` does) rather than
//! through the agent: the record is read off the ring buffer as the
//! programs wrote it (entry number and decider included, which the agent's
//! log puts in words), and one load serves every policy, each put in force
//! as a reload would. "The host" is the sandbox's network namespace with
//! this process's pid and user namespaces, as for an agent run there with
//! `nsenter --net=`.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use imds_guard::{
    kernel::{
        Guard, Stamp,
        identity::of_files,
        records::{DecisionRecord, RecordReason},
    },
    policy::{
        Action as Verdict, EndpointKind, Outcome, Place, Reason,
        cases::{CASES, Case, CgroupAt, WORKLOAD_ENDPOINT},
    },
};
use imds_guard_common::config_flags;
use imds_guard_e2e::{
    Action, FakeImds, IMDS_PORT, IMDS_V4, Netns, Probe, ProbeResult, Sandbox, TcpService,
    TestCgroup, UserNamespace, cgroup_path, privileged_or_skip,
};

/// The cgroups the cases run in, below the guarded one, made before the
/// programs load (the listing at each policy classifies them) and removed
/// children first.
struct Cgroups {
    guarded: PathBuf,
    made: Vec<TestCgroup>,
}

impl Cgroups {
    fn make(guarded: &TestCgroup, cases: &[Case]) -> Self {
        let mut by_path: BTreeMap<String, usize> = BTreeMap::new();
        let mut made: Vec<TestCgroup> = Vec::new();
        for case in cases {
            // The path from the guarded cgroup: "" for itself.
            let rel = case.caller.cgroup.path("");
            let mut at = String::new();
            for name in rel.split('/').filter(|n| !n.is_empty()) {
                let parent = by_path.get(&at).copied();
                at = format!("{at}/{name}");
                if by_path.contains_key(&at) {
                    continue;
                }
                let child = match parent {
                    Some(i) => made[i].child(name),
                    None => guarded.child(name),
                };
                by_path.insert(at.clone(), made.len());
                made.push(child);
            }
        }
        Self {
            guarded: guarded.path().to_owned(),
            made,
        }
    }

    fn dir(&self, at: CgroupAt) -> PathBuf {
        let rel = at.path("");
        self.guarded.join(rel.trim_start_matches('/'))
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        while let Some(cgroup) = self.made.pop() {
            drop(cgroup);
        }
    }
}

/// Where the probes run: the sandbox (the host) and a container's network
/// namespace with a metadata service of its own.
struct World<'a> {
    sb: &'a Sandbox,
    container: &'a Netns,
    cgroups: &'a Cgroups,
}

impl World<'_> {
    /// Runs the case's caller: its ids and groups, in user namespaces its
    /// owners created (each mapping ids to themselves), in its place and
    /// cgroup.
    fn run(&self, case: &Case) -> ProbeResult {
        let c = &case.caller;
        let netns: &Path = match c.place {
            Place::Host => self.sb.netns_path(),
            Place::Container => self.container.path(),
        };
        let owners = UserNamespace::nested(&self.sb.cgroup, c.owners);
        let mut probe = Probe::at(netns, self.cgroups.dir(c.cgroup))
            .bin(env!("CARGO_BIN_EXE_imds-probe"))
            .uid(c.uid)
            .gid(c.gid)
            .groups(c.groups);
        if let Some(inner) = owners.last() {
            probe = probe.userns(inner.path());
        }
        let (ip, port) = match c.to {
            EndpointKind::Host => (IMDS_V4, IMDS_PORT),
            EndpointKind::Workload => WORKLOAD_ENDPOINT,
        };
        probe.run(Action::connect(ip, port))
    }
}

/// Every way the probe and its record differ from the case, in words.
fn mismatches(case: &Case, base: &str, r: &ProbeResult, d: Option<&DecisionRecord>) -> Vec<String> {
    let (c, e) = (&case.caller, &case.expected);
    let mut wrong = Vec::new();
    // The world is what the case says, as the probe saw it.
    let mut groups = c.groups.to_vec();
    groups.sort_unstable();
    let mut seen = r.groups.clone();
    seen.sort_unstable();
    if (r.uid, r.gid, seen) != (c.uid, c.gid, groups) {
        wrong.push(format!(
            "the probe ran as uid {} gid {} groups {:?}",
            r.uid, r.gid, r.groups
        ));
    }
    if r.cgroup != c.cgroup.path(base) {
        wrong.push(format!("the probe ran in cgroup {}", r.cgroup));
    }
    let refused = !r.ok && r.errno == Some(libc::EPERM);
    match (e.action, r.ok, refused) {
        (Verdict::Allow, true, _) | (Verdict::Deny, _, true) => {}
        _ => wrong.push(format!("expected {:?}, the connect: {r:?}", e.action)),
    }
    let Some(d) = d else {
        wrong.push("no record".to_owned());
        return wrong;
    };
    let outcome = match e.action {
        Verdict::Allow => Outcome::Allow,
        Verdict::Deny => Outcome::Deny,
    };
    let want = (outcome, RecordReason::Policy(e.reason), e.entry, e.id);
    let got = (d.outcome, d.reason, d.entry, d.decider);
    if got != want {
        wrong.push(format!(
            "record (outcome, reason, entry, decider) {got:?}, expected {want:?}"
        ));
    }
    if (d.uid, d.gid, d.place()) != (c.uid, c.gid, Some(c.place)) {
        wrong.push(format!(
            "record of uid {} gid {} place {:?}",
            d.uid,
            d.gid,
            d.place()
        ));
    }
    wrong
}

/// The cases in runs of one policy each, in the table's order of first use:
/// one reload per policy.
fn by_policy() -> Vec<(&'static str, Vec<&'static Case>)> {
    let mut runs: Vec<(&'static str, Vec<&'static Case>)> = Vec::new();
    for case in CASES {
        match runs.iter_mut().find(|(p, _)| *p == case.policy) {
            Some((_, cases)) => cases.push(case),
            None => runs.push((case.policy, vec![case])),
        }
    }
    runs
}

#[test]
fn every_case_of_the_table_is_decided_so_by_the_programs() {
    if !privileged_or_skip("every_case_of_the_table_is_decided_so_by_the_programs") {
        return;
    }
    let sb = Sandbox::new();
    let container = Netns::new();
    let _container_imds = FakeImds::start(&container);
    // The workload endpoint, where the host's callers and the container's
    // connect.
    let workload = SocketAddr::from(WORKLOAD_ENDPOINT);
    let _workload = [sb.netns_path(), container.path()].map(|n| TcpService::start(n, workload));
    let base = cgroup_path(&sb.cgroup);
    let cgroups = Cgroups::make(&sb.cgroup, CASES);
    let host = of_files(
        Path::new("/proc/self/ns/pid"),
        sb.netns_path(),
        Path::new("/proc/self/ns/user"),
    )
    .unwrap_or_else(|e| panic!("the host's namespaces: {e}"));
    // Declared after the cgroups, so it detaches before they go.
    let mut guard = Guard::load_in(0, host).unwrap_or_else(|e| panic!("loading the guard: {e}"));
    let mut events = guard
        .take_events()
        .unwrap_or_else(|e| panic!("the event ring: {e}"));
    // Allowed decisions are records too (the agent asks so at debug level).
    let stamp = Stamp {
        flags: config_flags::LOG_ALLOWED,
        ..Stamp::default()
    };
    let world = World {
        sb: &sb,
        container: &container,
        cgroups: &cgroups,
    };
    let mut attached = false;
    let mut wrong = Vec::new();
    for (text, cases) in by_policy() {
        let policy = cases[0]
            .policy(&base)
            .unwrap_or_else(|e| panic!("{}: the policy was refused: {e}", cases[0].name));
        guard
            .apply(&policy, &stamp)
            .unwrap_or_else(|e| panic!("applying the policy: {e}\n{text}"));
        if !attached {
            guard
                .attach(sb.cgroup.path(), None)
                .unwrap_or_else(|e| panic!("attaching to {base}: {e}"));
            attached = true;
        }
        for case in cases {
            let process = case.process(&policy, &base);
            let twin = case.decide(&policy, &base);
            assert_eq!(twin, case.expected.decision(), "{}: the twin", case.name);
            let r = world.run(case);
            let mut records = Vec::new();
            while let Some(item) = events.next() {
                records.push(
                    DecisionRecord::decode(&item)
                        .unwrap_or_else(|e| panic!("{}: a record: {e}", case.name)),
                );
            }
            let record = records.iter().find(|d| d.pid == r.pid);
            // The table is the bpf_loop build's; the unrolled one (no
            // bpf_loop here, or IMDS_GUARD_PROGRAMS) reads fewer groups, and
            // refuses a case past its bound for that alone.
            let within =
                policy.decide_process_at_within(&process, case.caller.to, guard.build().bounds());
            if within != twin {
                assert_eq!(within.reason, Reason::TooManyGroups, "{}", case.name);
                let reason = record.map(|d| d.reason);
                if r.ok || reason != Some(RecordReason::Policy(Reason::TooManyGroups)) {
                    wrong.push(format!(
                        "{}: past the {} build's group bound, the connect {r:?}, the record's \
                         reason {reason:?}",
                        case.name,
                        guard.build().name()
                    ));
                }
                continue;
            }
            for what in mismatches(case, &base, &r, record) {
                wrong.push(format!("{}: {what}", case.name));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} mismatches between the programs and the table of {} cases:\n{}",
        wrong.len(),
        CASES.len(),
        wrong.join("\n")
    );
}
