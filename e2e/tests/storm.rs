//! A denial storm through the agent: the log stays bounded, and says what
//! it held back.

use std::time::Duration;

use imds_guard_e2e::{Action, IMDS_PORT, IMDS_V4, NOBODY, Sandbox, field, privileged_or_skip};
use serde_json::Value;

#[test]
fn repeated_denials_are_rate_limited_with_a_count_of_what_was_suppressed() {
    if !privileged_or_skip("repeated_denials_are_rate_limited_with_a_count_of_what_was_suppressed")
    {
        return;
    }
    let sb = Sandbox::with_agent("[allow]\nuids = [1001]\n");
    const STORM: u32 = 300;
    let r = sb
        .probe_as(NOBODY, NOBODY)
        .repeat(STORM)
        .run(Action::connect(IMDS_V4, IMDS_PORT));
    assert_eq!(r.eperm, STORM, "{r:?}");

    let pid = Some(u64::from(r.pid));
    let is = |rec: &Value, event: &str| {
        field(rec, "event").and_then(Value::as_str) == Some(event)
            && field(rec, "pid").and_then(Value::as_u64) == pid
    };
    // The summary comes when the 10 s window closes.
    let summary = sb
        .agent()
        .wait_for(|rec| is(rec, "suppressed"), Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no suppressed record:\n{}", sb.agent().output()));
    let denies = sb
        .agent()
        .records()
        .iter()
        .filter(|r| is(r, "deny"))
        .count();
    assert_eq!(denies, 5, "a burst of 5 records per window");
    assert_eq!(
        field(&summary, "suppressed").and_then(Value::as_u64),
        Some(u64::from(STORM) - 5),
        "{summary}"
    );
    assert_eq!(
        field(&summary, "uid").and_then(Value::as_u64),
        Some(u64::from(NOBODY))
    );

    // The final counters the agent reports on SIGTERM count every denial.
    sb.agent().terminate();
    let last = sb
        .agent()
        .records()
        .into_iter()
        .rev()
        .find(|r| field(r, "denied").is_some())
        .unwrap_or_else(|| panic!("no final counters:\n{}", sb.agent().output()));
    assert_eq!(
        field(&last, "denied").and_then(Value::as_u64),
        Some(u64::from(STORM)),
        "{last}"
    );
    assert_eq!(field(&last, "events_lost").and_then(Value::as_u64), Some(0));
    // Every decision reached the agent, the suppressed ones included.
    assert_eq!(
        field(&last, "events_received").and_then(Value::as_u64),
        Some(u64::from(STORM)),
        "{last}"
    );
}
