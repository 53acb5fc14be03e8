//! `imds-guard reload`: asks the running agent to reload its policy and
//! waits for its answer, so that `systemctl reload imds-guard` (the unit's
//! `ExecReload`) fails when the policy was refused. `kill -HUP` says
//! nothing of the outcome, needs procps in the unit, and systemd 252
//! (Debian 12) has no `Type=notify-reload`.
//!
//! The answer comes through the config the agent pins for `status`
//! (`common::Config`): `answered` moves when a reload is taken (a new
//! generation, whose epoch advances) or refused (`RELOAD_REFUSED` set on
//! the generation in force), and `RELOADING` is set while one runs. No
//! socket: the agent would need one of its own, a place for it in the
//! unit's sandbox and a rule for who may connect, for one bit that the
//! kernel already holds where only root can read it, and that stays true
//! after the agent is gone.
//!
//! A reload that started before the request may have read the file before
//! it changed: the answer waited for is then the one after it, which the
//! agent runs for the request (a SIGHUP during a reload is served after
//! it).

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use imds_guard_common::{Config, config_flags};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{CliError, Outcome, ReloadArgs, out::outln};
use crate::{
    kernel::{
        inspect::{self, Status, is_agent},
        pins::Pins,
    },
    policy::{PolicySpec, SystemResolver},
};

/// How often the pinned config is read while waiting.
const POLL: Duration = Duration::from_millis(20);

pub fn execute(args: &ReloadArgs) -> Result<Outcome, CliError> {
    let pins = Pins::new(&args.pin_dir);
    let dir = pins.dir().display().to_string();
    let before = read(&pins)?.ok_or_else(|| {
        failed(format!(
            "no guard is pinned at {dir}: there is no agent to reload; start one (systemctl \
             start imds-guard)"
        ))
    })?;
    let pid = before.agent_pid;
    if !pins.locked() || !is_agent(pid) {
        return Err(failed(format!(
            "no agent runs the guard pinned at {dir} (its pid {pid} is gone), so nothing can \
             reload it; the pinned guard keeps its policy: start the agent (systemctl start \
             imds-guard), which reads the policy file as it starts"
        )));
    }
    let target = wanted(&before);
    kill(Pid::from_raw(pid as i32), Signal::SIGHUP)
        .map_err(|e| failed(format!("cannot signal the agent (pid {pid}): {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let after = loop {
        let now = read(&pins)?.filter(|c| c.agent_pid == pid);
        match now {
            Some(c) if answered(&c, target) => break c,
            Some(_) if is_agent(pid) && Instant::now() < deadline => thread::sleep(POLL),
            Some(_) if is_agent(pid) => {
                return Err(failed(format!(
                    "the agent (pid {pid}) did not answer within {} s; its reload may still \
                     be running: imds-guard status, journalctl -u imds-guard",
                    args.timeout
                )));
            }
            _ => {
                return Err(failed(format!(
                    "the agent (pid {pid}) stopped before it answered: journalctl -u imds-guard"
                )));
            }
        }
    };
    let config = super::policy_file(args.config.as_deref());
    if after.flags & config_flags::RELOAD_REFUSED == 0 {
        let status = Status::read(&pins).map_err(CliError::runtime)?;
        outln!(
            "reloaded (policy epoch {}): {}",
            after.epoch,
            super::state::line(&status, &config)
        )?;
        return Ok(Outcome::Success);
    }
    refused(&config)
}

/// The config in force at `pins`, if a guard is pinned there.
fn read(pins: &Pins) -> Result<Option<Config>, CliError> {
    inspect::config_in_force(pins)
        .map(|c| c.map(|(_, c)| c))
        .map_err(CliError::runtime)
}

/// The `answered` count that answers a request made now: the next one,
/// or the one after when a reload runs already (it may have read the file
/// before the request).
fn wanted(before: &Config) -> u32 {
    let running = u32::from(before.flags & config_flags::RELOADING != 0);
    before.answered.wrapping_add(1 + running)
}

/// Whether `now` has answered up to `target` (the count wraps).
fn answered(now: &Config, target: u32) -> bool {
    now.answered.wrapping_sub(target) < u32::MAX / 2
}

/// Why the agent refused: the policy's problems, exit 1; or, when the file
/// validates now, that the agent could not put it in force, exit 3.
fn refused(config: &Path) -> Result<Outcome, CliError> {
    let kept = "the policy in force is unchanged";
    match PolicySpec::load(config).and_then(|s| s.resolve_available(&SystemResolver)) {
        Err(e) => {
            eprintln!(
                "imds-guard: reload refused: {} does not validate; {kept}:",
                config.display()
            );
            Err(CliError::Policy(e))
        }
        Ok(_) => Err(failed(format!(
            "reload refused: the agent could not put {} in force ({kept}); journalctl -u \
             imds-guard says why",
            config.display()
        ))),
    }
}

fn failed(message: String) -> CliError {
    CliError::Runtime(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(answered: u32, flags: u32) -> Config {
        Config {
            answered,
            flags,
            ..Config::default()
        }
    }

    #[test]
    fn a_reload_already_running_is_not_the_answer() {
        assert_eq!(wanted(&config(4, 0)), 5);
        assert_eq!(wanted(&config(4, config_flags::RELOADING)), 6);
        assert_eq!(wanted(&config(u32::MAX, 0)), 0);
    }

    #[test]
    fn the_answer_is_counted_across_the_wrap() {
        assert!(!answered(&config(4, 0), 5));
        assert!(answered(&config(5, 0), 5));
        assert!(answered(&config(7, 0), 5));
        assert!(!answered(&config(u32::MAX, 0), 0));
        assert!(answered(&config(0, 0), 0));
        assert!(answered(&config(1, 0), u32::MAX));
    }
}
