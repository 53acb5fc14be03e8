//! `imds-guard run`: the agent, in a single-threaded tokio runtime.

use super::{CliError, Outcome, RunArgs};
use crate::{
    daemon::{self, DaemonError, logging},
    kernel::{
        GuardError, LoadError,
        place::{self, PlaceError},
        refused::{self, Privileges, Refused},
    },
    policy::PolicySource,
};

pub fn execute(args: RunArgs) -> Result<Outcome, CliError> {
    daemon::one_heap();
    logging::init(args.log_format);
    // Before any thread starts: threads inherit the cgroup namespace
    // entered here.
    let request = place::Request {
        cgroup: args.cgroup.as_deref(),
        host_cgroup_ns: &args.host_cgroupns,
        container: args.container,
        ..place::Request::default()
    };
    let place = place::establish(&request).map_err(place_error)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CliError::runtime(std::io::Error::new(
                e.kind(),
                format!("cannot start the runtime: {e}"),
            ))
        })?;
    let config = daemon::Config {
        config: PolicySource::new(args.config),
        fallback: args.fallback,
        place,
        pin_dir: args.pin_dir,
        metrics_listen: args.metrics_listen,
        pods_dir: args.kubelet_pods_dir,
        forward: args.forward_path,
        status_file: args.status_file,
        watch_config: args.watch_config,
    };
    match rt.block_on(daemon::run(config)) {
        Ok(()) => Ok(Outcome::Success),
        Err(DaemonError::Policy(e)) => Err(CliError::Policy(e)),
        Err(DaemonError::PolicyKept { source, pin_dir }) => Err(CliError::PolicyKept {
            error: source,
            pin_dir,
        }),
        Err(DaemonError::Guard(e)) => Err(guard_error(e, Privileges::own())),
        Err(e) => Err(CliError::runtime(e)),
    }
}

/// Where the guard would go cannot be settled: for good (exit 6) when the
/// agent runs where it cannot guard the host (a namespace it cannot leave,
/// a hierarchy it may not mount), otherwise an error a restart may not
/// meet again.
fn place_error(e: PlaceError) -> CliError {
    match e {
        PlaceError::UserNs { .. }
        | PlaceError::PidNs { .. }
        | PlaceError::CgroupNs { .. }
        | PlaceError::Mount { .. } => CliError::Permanent(Box::new(e)),
        e => CliError::runtime(e),
    }
}

/// A guard that cannot be set up: for good (exit 6, with the cause and the
/// fix) when the kernel refuses the agent itself or lacks what the guard
/// needs, otherwise an error a restart may not meet again.
fn guard_error(e: GuardError, privileges: Privileges) -> CliError {
    let cause = match e {
        GuardError::Load(LoadError::MissingHelper { .. }) => refused::missing_helper(privileges),
        _ => refused::diagnose(&e, privileges),
    };
    if let Some(cause) = cause {
        return CliError::Permanent(Box::new(Refused {
            cause,
            source: Box::new(e),
        }));
    }
    match e {
        GuardError::MissingFeature(_)
        | GuardError::Load(LoadError::MissingHelper { .. })
        | GuardError::Offsets(_)
        | GuardError::CgroupOffsets(_)
        | GuardError::Btf(_)
        | GuardError::NoObject => CliError::Permanent(Box::new(e)),
        e => CliError::runtime(e),
    }
}
