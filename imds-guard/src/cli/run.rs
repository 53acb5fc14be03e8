//! `imds-guard run`: the agent, in a single-threaded tokio runtime.

use super::{CliError, Outcome, RunArgs};
use crate::daemon::{self, DaemonError, logging};

pub fn execute(args: RunArgs) -> Result<Outcome, CliError> {
    daemon::one_heap();
    logging::init(args.log_format);
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
        config: args.config,
        fallback: args.fallback,
        cgroup: args.cgroup,
        pin_dir: args.pin_dir,
        metrics_listen: args.metrics_listen,
    };
    match rt.block_on(daemon::run(config)) {
        Ok(()) => Ok(Outcome::Success),
        Err(DaemonError::Policy(e)) => Err(CliError::Policy(e)),
        Err(e) => Err(CliError::runtime(e)),
    }
}
