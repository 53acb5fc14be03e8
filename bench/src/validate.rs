//! Section 7, `imds-guard validate` of one-line policies of ever more uids
//! (`[allow] uids = [0, 100000, ...]`, all on one line, up to 131,072, the
//! most a policy may hold): how long the command takes, from spawn to
//! exit, and how that grows with the size. The sizes take turns round by
//! round; a 1-uid policy runs in every round too, and its time (the
//! process's start and exit) is subtracted from the others' in the same
//! round. How the time grows is the slope of log(time) against log(uids)
//! over the sizes: 1 is linear, 2 quadratic.

use std::{
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, ensure};
use imds_guard_e2e::imds_guard_bin;

use super::{
    cli::Settings,
    setup::PolicyFile,
    stats::{Summary, interleave},
};

pub struct Size {
    pub uids: u32,
    /// Spawn to exit, in ms.
    pub wall_ms: Summary,
    /// Minus the 1-uid policy's time in the same round.
    pub net_ms: Summary,
}

pub struct ValidateResult {
    /// Without the 1-uid policy, which [`ValidateResult::base_ms`] is.
    pub sizes: Vec<Size>,
    pub base_ms: Summary,
    /// log-log slope of the net medians against the uids.
    pub exponent: Option<f64>,
    pub rounds: usize,
}

impl ValidateResult {
    /// The largest size measured.
    pub fn largest(&self) -> Option<&Size> {
        self.sizes.iter().max_by_key(|s| s.uids)
    }
}

pub fn run(s: &Settings) -> anyhow::Result<ValidateResult> {
    let policies: Vec<(u32, PolicyFile)> = s
        .validate_uids
        .iter()
        .map(|&n| (n, PolicyFile::allow_n(n)))
        .collect();
    // Once untimed: every policy must validate, and its file be cached.
    for (_, p) in &policies {
        validate(p)?;
    }
    let times = interleave("validate", policies.len(), s.rounds, |i| {
        validate(&policies[i].1)
    })?;
    let base = &times[0];
    let sizes: Vec<Size> = policies
        .iter()
        .zip(&times)
        .skip(1)
        .map(|((n, _), t)| Size {
            uids: *n,
            wall_ms: Summary::of(t),
            net_ms: Summary::of(&t.iter().zip(base).map(|(x, b)| x - b).collect::<Vec<_>>()),
        })
        .collect();
    let points: Vec<(f64, f64)> = sizes
        .iter()
        .map(|sz| (f64::from(sz.uids), sz.net_ms.median))
        .collect();
    Ok(ValidateResult {
        exponent: loglog_slope(&points),
        base_ms: Summary::of(base),
        sizes,
        rounds: s.rounds,
    })
}

/// One `imds-guard validate --config POLICY`, spawn to exit, in ms.
fn validate(policy: &PolicyFile) -> anyhow::Result<f64> {
    let bin = imds_guard_bin();
    let started = Instant::now();
    let out = Command::new(&bin)
        .arg("validate")
        .arg("--config")
        .arg(&policy.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {} validate", bin.display()))?;
    let took = started.elapsed().as_secs_f64() * 1e3;
    ensure!(
        out.status.success(),
        "imds-guard validate {} failed ({}): {}",
        policy.path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(took)
}

/// The least-squares slope of ln(y) against ln(x), over the points with
/// both positive; `None` with fewer than two such points (or all at one x).
pub fn loglog_slope(points: &[(f64, f64)]) -> Option<f64> {
    let logs: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
        .map(|(x, y)| (x.ln(), y.ln()))
        .collect();
    if logs.len() < 2 {
        return None;
    }
    let n = logs.len() as f64;
    let mx = logs.iter().map(|p| p.0).sum::<f64>() / n;
    let my = logs.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = logs.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = logs.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::loglog_slope;

    #[test]
    fn linear_and_quadratic_growth_have_slopes_one_and_two() {
        let linear: Vec<(f64, f64)> = [1.0, 2.0, 4.0, 8.0].iter().map(|&x| (x, 3.0 * x)).collect();
        let quadratic: Vec<(f64, f64)> = [1.0, 2.0, 4.0].iter().map(|&x| (x, x * x)).collect();
        assert!((loglog_slope(&linear).expect("slope") - 1.0).abs() < 1e-9);
        assert!((loglog_slope(&quadratic).expect("slope") - 2.0).abs() < 1e-9);
    }

    #[test]
    fn too_few_usable_points_have_no_slope() {
        assert_eq!(loglog_slope(&[(1.0, 1.0)]), None);
        // A non-positive time (noise larger than the work) is left out.
        assert_eq!(loglog_slope(&[(1.0, 1.0), (2.0, -0.5)]), None);
        assert_eq!(loglog_slope(&[(2.0, 1.0), (2.0, 3.0)]), None);
    }
}
