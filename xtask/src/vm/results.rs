//! Reading what the guest reported: per suite, libtest's JSON events
//! between `@vm start SUITE` and `@vm exit SUITE CODE`, then `@vm done`.
//! Lines that are not events (a child process writing to the test's
//! stdout) are ignored; a test that started and never ended (the suite was
//! stopped, or the guest died) counts as failed.

use std::fmt::Write as _;

use anyhow::{Result, bail};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    Ignored,
    /// Started, never reported an end.
    Unfinished,
}

#[derive(Debug, PartialEq)]
pub struct Test {
    pub name: String,
    pub outcome: Outcome,
    /// libtest's `exec_time`, seconds.
    pub secs: Option<f64>,
    /// What the test printed, panic message included (failures only).
    pub output: String,
}

#[derive(Debug, PartialEq)]
pub struct Suite {
    pub name: String,
    /// The test binary's exit code; `None` if the guest never said.
    pub exit: Option<i32>,
    /// libtest's time for the whole suite, seconds.
    pub secs: Option<f64>,
    pub tests: Vec<Test>,
}

#[derive(Debug, PartialEq)]
pub struct Report {
    pub suites: Vec<Suite>,
    /// Whether the guest reached its end.
    pub done: bool,
}

pub fn parse(text: &str) -> Report {
    let mut report = Report {
        suites: Vec::new(),
        done: false,
    };
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(name) = line.strip_prefix("@vm start ") {
            report.suites.push(Suite {
                name: name.trim().to_owned(),
                exit: None,
                secs: None,
                tests: Vec::new(),
            });
        } else if let Some(rest) = line.strip_prefix("@vm exit ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(code)) = (words.next(), words.next()) else {
                continue;
            };
            if let Some(suite) = report.suites.iter_mut().rev().find(|s| s.name == name) {
                suite.exit = code.parse().ok();
            }
        } else if line.trim() == "@vm done" {
            report.done = true;
        } else if let Some(suite) = report.suites.last_mut() {
            if let Ok(event) = serde_json::from_str::<Value>(line) {
                apply(suite, &event);
            }
        }
    }
    report
}

/// Applies one libtest event (`{"type":"test","event":"started"|"ok"|
/// "failed"|"ignored",...}`, or the suite's end with its time) to `suite`.
fn apply(suite: &mut Suite, event: &Value) {
    if event["type"] == "suite" {
        suite.secs = event["exec_time"].as_f64().or(suite.secs);
        return;
    }
    if event["type"] != "test" {
        return;
    }
    let Some(name) = event["name"].as_str() else {
        return;
    };
    let outcome = match event["event"].as_str() {
        Some("started") => Outcome::Unfinished,
        Some("ok") => Outcome::Ok,
        Some("failed" | "timeout") => Outcome::Failed,
        Some("ignored") => Outcome::Ignored,
        _ => return,
    };
    let test = match suite.tests.iter_mut().find(|t| t.name == name) {
        Some(t) => t,
        None => {
            suite.tests.push(Test {
                name: name.to_owned(),
                outcome,
                secs: None,
                output: String::new(),
            });
            let Some(t) = suite.tests.last_mut() else {
                return;
            };
            t
        }
    };
    test.outcome = outcome;
    test.secs = event["exec_time"].as_f64().or(test.secs);
    if let Some(out) = event["stdout"].as_str() {
        test.output = out.to_owned();
    }
}

impl Report {
    fn count(&self, outcome: Outcome) -> usize {
        self.suites
            .iter()
            .flat_map(|s| &s.tests)
            .filter(|t| t.outcome == outcome)
            .count()
    }

    /// One line per test, failures with their output, and a closing
    /// `vm-test: N passed, N failed` line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for suite in &self.suites {
            let exit = suite
                .exit
                .map_or_else(|| "did not end".to_owned(), |c| format!("exit {c}"));
            let secs = suite
                .secs
                .map(|s| format!(", {s:.0} s"))
                .unwrap_or_default();
            let _ = writeln!(out, "vm-test suite {} ({exit}{secs}):", suite.name);
            for t in &suite.tests {
                let word = match t.outcome {
                    Outcome::Ok => "ok",
                    Outcome::Failed => "FAILED",
                    Outcome::Ignored => "ignored",
                    Outcome::Unfinished => "UNFINISHED",
                };
                let secs = t.secs.map(|s| format!(" ({s:.1} s)")).unwrap_or_default();
                let _ = writeln!(out, "  {word:10} {}::{}{secs}", suite.name, t.name);
            }
        }
        for suite in &self.suites {
            for t in suite.tests.iter().filter(|t| t.outcome == Outcome::Failed) {
                let _ = writeln!(
                    out,
                    "---- {}::{} ----\n{}",
                    suite.name,
                    t.name,
                    t.output.trim_end()
                );
            }
        }
        let _ = writeln!(
            out,
            "vm-test: {} passed, {} failed, {} ignored",
            self.count(Outcome::Ok),
            self.count(Outcome::Failed) + self.count(Outcome::Unfinished),
            self.count(Outcome::Ignored)
        );
        out
    }

    /// Fails unless the guest finished, every `expected` suite ran and
    /// exited 0, no test failed, and some test ran (any number, with a
    /// `filtered` run).
    pub fn verdict(&self, expected: &[&str], filtered: bool) -> Result<()> {
        let mut problems = Vec::new();
        if !self.done {
            problems.push("the guest did not report the end of its run".to_owned());
        }
        for name in expected {
            match self.suites.iter().find(|s| s.name == *name) {
                None => problems.push(format!("suite {name} did not run")),
                Some(s) if s.exit != Some(0) => problems.push(format!(
                    "suite {name} {}",
                    s.exit
                        .map_or_else(|| "did not end".to_owned(), |c| format!("exited {c}"))
                )),
                Some(_) => {}
            }
        }
        let failed = self.count(Outcome::Failed) + self.count(Outcome::Unfinished);
        if failed > 0 {
            problems.push(format!("{failed} tests failed"));
        }
        if !filtered && self.count(Outcome::Ok) == 0 {
            problems.push("no test passed".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("vm-test: {}", problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = r#"@vm start guard
{ "type": "suite", "event": "started", "test_count": 3 }
{ "type": "test", "event": "started", "name": "allows_root" }
{ "type": "test", "name": "allows_root", "event": "ok", "exec_time": 1.25 }
{ "type": "test", "event": "started", "name": "denies_nobody" }
some child wrote this
{ "type": "test", "name": "denies_nobody", "event": "failed", "exec_time": 10.5, "stdout": "thread 'denies_nobody' panicked at e2e/tests/guard.rs:10:5:\nprobe timed out\n" }
{ "type": "test", "event": "started", "name": "later" }
{ "type": "test", "name": "later", "event": "ignored" }
{ "type": "suite", "event": "failed", "passed": 1, "failed": 1, "ignored": 1, "measured": 0, "filtered_out": 0, "exec_time": 12.0 }
@vm exit guard 101
@vm start lifecycle
{ "type": "test", "event": "started", "name": "hammer" }
"#;

    #[test]
    fn per_test_outcomes_times_and_failure_output() {
        let report = parse(RUN);
        assert!(!report.done);
        let guard = &report.suites[0];
        assert_eq!(guard.exit, Some(101));
        assert_eq!(guard.secs, Some(12.0));
        assert_eq!(guard.tests.len(), 3);
        assert_eq!(guard.tests[0].outcome, Outcome::Ok);
        assert_eq!(guard.tests[0].secs, Some(1.25));
        assert_eq!(guard.tests[1].outcome, Outcome::Failed);
        assert!(guard.tests[1].output.contains("probe timed out"));
        assert_eq!(guard.tests[2].outcome, Outcome::Ignored);
        let lifecycle = &report.suites[1];
        assert_eq!(lifecycle.exit, None);
        assert_eq!(lifecycle.tests[0].outcome, Outcome::Unfinished);
    }

    #[test]
    fn an_interrupted_run_fails_and_says_why() {
        let report = parse(RUN);
        let err = report
            .verdict(&["guard", "lifecycle", "storm"], false)
            .expect_err("failed run");
        let msg = format!("{err:#}");
        assert!(msg.contains("did not report the end"), "{msg}");
        assert!(msg.contains("suite guard exited 101"), "{msg}");
        assert!(msg.contains("suite lifecycle did not end"), "{msg}");
        assert!(msg.contains("suite storm did not run"), "{msg}");
        assert!(msg.contains("2 tests failed"), "{msg}");
        let text = report.render();
        assert!(
            text.contains("FAILED     guard::denies_nobody (10.5 s)"),
            "{text}"
        );
        assert!(text.contains("UNFINISHED lifecycle::hammer"), "{text}");
        assert!(
            text.contains("vm-test suite guard (exit 101, 12 s):"),
            "{text}"
        );
        assert!(
            text.ends_with("vm-test: 1 passed, 2 failed, 1 ignored\n"),
            "{text}"
        );
    }

    #[test]
    fn a_clean_run_passes() {
        let text = "@vm start storm\n\
            {\"type\":\"test\",\"event\":\"started\",\"name\":\"a\"}\n\
            {\"type\":\"test\",\"name\":\"a\",\"event\":\"ok\"}\n\
            @vm exit storm 0\n@vm done\n";
        let report = parse(text);
        assert!(report.done);
        assert!(report.verdict(&["storm"], false).is_ok());
        // Nothing ran: a failure, unless a filter may have excluded it all.
        let empty = parse("@vm start storm\n@vm exit storm 0\n@vm done\n");
        assert!(empty.verdict(&["storm"], false).is_err());
        assert!(empty.verdict(&["storm"], true).is_ok());
    }
}
