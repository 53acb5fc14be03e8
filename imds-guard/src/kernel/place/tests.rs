//! The placement's parts that need no agent: the mount of a hierarchy
//! of its own (in a private mount namespace), the layout test, the
//! namespace constants.

use nix::{
    mount::{MntFlags, umount2},
    sched::unshare,
};

use super::*;
use crate::testing::in_private_run;

/// Runs `f` in a private mount namespace with a tmpfs on `/run` and no
/// cgroup2 mount, as a host that boots cgroup v1 only has (skips like
/// [`in_private_run`]).
fn without_cgroup2(f: impl FnOnce() + Send + 'static) {
    in_private_run(move || {
        for point in cgroup2_mounts() {
            umount2(&point, MntFlags::MNT_DETACH).unwrap_or_else(|e| {
                panic!(
                    "unmounting {} in the test's namespace: {e}",
                    point.display()
                )
            });
        }
        f();
    });
}

/// The calling thread's cgroup2 mount points.
fn cgroup2_mounts() -> Vec<PathBuf> {
    use procfs::FromRead as _;
    procfs::process::MountInfos::from_file("/proc/thread-self/mountinfo")
        .expect("mountinfo")
        .0
        .into_iter()
        .filter(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .collect()
}

#[test]
fn mounts_a_hierarchy_of_its_own_where_none_is_mounted_and_reuses_it() {
    let machines = cgroup::cgroup2_root().expect("this machine mounts cgroup2");
    let root_ino = std::fs::metadata(&machines).expect("its root").ino();
    without_cgroup2(move || {
        assert!(matches!(
            cgroup::cgroup2_root(),
            Err(CgroupError::NotMounted)
        ));
        let own = Path::new(OWN_MOUNT);
        let (dir, hierarchy) = root(own).expect("mounts one");
        assert_eq!(dir, own);
        assert_eq!(
            hierarchy,
            Hierarchy::Mounted {
                mount: own.to_owned()
            }
        );
        // The same hierarchy as the machine's, at its root.
        let file = cgroup::open(own).expect("a cgroup2 directory");
        assert_eq!(cgroup::id(&file, own).expect("its id"), root_ino);
        // An agent started again finds its mount rather than stacking
        // another.
        let (again, hierarchy) = root(own).expect("finds it");
        assert_eq!(again, own);
        assert!(matches!(hierarchy, Hierarchy::Mounted { .. }));
        assert_eq!(cgroup2_mounts(), vec![own.to_owned()]);
    });
}

#[test]
fn a_mount_that_cannot_be_made_is_refused_with_its_place() {
    without_cgroup2(|| {
        // /proc is no place for a directory.
        let err = root(Path::new("/proc/imds-guard-cgroup2")).expect_err("cannot mount");
        assert!(matches!(err, PlaceError::Mount { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/proc/imds-guard-cgroup2"),
            "{err}"
        );
    });
}

#[test]
fn systemd_below_the_root_is_a_layout_everyone_at_the_root_is_not() {
    // A unified or hybrid systemd host.
    assert!(below_root("1:name=systemd:/init.scope\n0::/init.scope\n"));
    // Amazon Linux 2: cgroup v1 only, the v2 line at the root.
    assert!(!below_root("2:cpu:/\n1:name=systemd:/init.scope\n0::/\n"));
    // No v2 line at all (a kernel without cgroup2).
    assert!(!below_root("1:name=systemd:/\n"));
}

#[test]
fn a_cgroup_namespace_of_its_own_is_left_for_the_initial_one_and_no_other() {
    // The constant, checked against the kernel that runs the tests.
    let initial = own_ns("cgroup").expect("reads its namespace");
    if initial != PROC_CGROUP_INIT_INO {
        let reason = format!("skipping: the tests run in cgroup:[{initial}], not the initial one");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{reason}");
        eprintln!("{reason}");
        return;
    }
    // The main thread stays in the initial namespace: its file names it.
    let host = PathBuf::from(format!("/proc/{}/ns/cgroup", std::process::id()));
    let joined = std::thread::spawn(move || {
        // A cgroup namespace is per thread: this one dies with the thread.
        if let Err(e) = unshare(CloneFlags::CLONE_NEWCGROUP) {
            let reason = format!("skipping: cannot make a cgroup namespace ({e}); run as root");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{reason}");
            eprintln!("{reason}");
            return;
        }
        let own = own_ns("cgroup").expect("reads its namespace");
        assert_ne!(own, PROC_CGROUP_INIT_INO);
        // Its own namespace named as the host's: refused, said why.
        let itself = Request {
            host_cgroup_ns: Path::new("/proc/thread-self/ns/cgroup"),
            ..Request::default()
        };
        let err = leave_cgroup_ns(&itself).expect_err("not the host's");
        let text = err.to_string();
        assert!(text.contains(&format!("cgroup:[{own}]")), "{text}");
        assert!(text.contains("not the host's either"), "{text}");
        assert!(text.contains("hostPID: true"), "{text}");
        assert_eq!(own_ns("cgroup").expect("reads it"), own);
        // The initial one: entered.
        let host = Request {
            host_cgroup_ns: &host,
            ..Request::default()
        };
        assert_eq!(
            leave_cgroup_ns(&host).expect("enters"),
            CgroupNs::Entered { from: own }
        );
        assert_eq!(own_ns("cgroup").expect("reads it"), PROC_CGROUP_INIT_INO);
        // Already there: nothing to do.
        assert_eq!(leave_cgroup_ns(&host).expect("stays"), CgroupNs::Host);
    })
    .join();
    if let Err(panic) = joined {
        std::panic::resume_unwind(panic);
    }
}
