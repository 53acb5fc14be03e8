//! `status` as another user than root, who cannot read the pins: what the
//! agent last wrote to its status file (`daemon::status_file`), said to be
//! a snapshot of that age, never passed off as the kernel's word.

use std::{fmt::Write as _, path::Path};

use serde_json::Value;

use super::{CliError, out::outln};

/// Prints the status file at `path`, if it can be read, as JSON (the file
/// with `source` added) or as a few labelled lines; nothing otherwise.
pub fn print(path: &Path, json: bool) -> Result<(), CliError> {
    let Some(mut file) = std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .filter(Value::is_object)
    else {
        return Ok(());
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if json {
        file["source"] = serde_json::json!(format!(
            "the agent's status file {}, not the kernel (only root can read the pins)",
            path.display()
        ));
        outln!("{file}")?;
    } else {
        outln!("{}", text(&file, path, now))?;
    }
    Ok(())
}

/// The few lines a person needs, each value as the file says it.
fn text(f: &Value, path: &Path, now: u64) -> String {
    let age = f["updated_unix"].as_u64().map_or_else(String::new, |at| {
        format!(", {} s ago", now.saturating_sub(at))
    });
    let mut s = format!(
        "imds-guard: NOT read from the kernel (only root can read the pins); the agent's status \
         file {} says, as of {}{age}:",
        path.display(),
        f["updated_at"].as_str().unwrap_or("an unknown time"),
    );
    let state = if f["enforcing"] == true {
        "enforcing"
    } else {
        "NOT enforcing"
    };
    let _ = write!(
        s,
        "\n  {state} (mode {}){}; policy sha256 {}; forward path {}",
        f["mode"].as_str().unwrap_or("unknown"),
        if f["fallback"] == true {
            ", FALLBACK policy"
        } else {
            ""
        },
        f["policy"]["digest"].as_str().unwrap_or("none"),
        if f["forward"]["guarded"] == true {
            "guarded"
        } else {
            "NOT guarded"
        },
    );
    let c = &f["counters"];
    if c.is_object() {
        let _ = write!(
            s,
            "\n  counters: allowed {} denied {} audited {} events lost {}",
            c["allowed"], c["denied"], c["audited"], c["events_lost"]
        );
    }
    let agent = &f["agent"];
    let _ = write!(
        s,
        "\n  agent:    pid {} {}",
        agent["pid"],
        agent["state"].as_str().unwrap_or("unknown")
    );
    if let Some(note) = agent["stopped"].as_str() {
        let _ = write!(s, "\n  {note}");
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_snapshot_is_said_to_be_one_with_its_age() {
        let file = json!({
            "enforcing": true, "mode": "enforce", "fallback": false,
            "policy": {"digest": "ab"}, "forward": {"guarded": true},
            "counters": {"allowed": 1, "denied": 2, "audited": 0, "events_lost": 0},
            "updated_at": "2026-11-23T11:40:09Z", "updated_unix": 100,
            "agent": {"pid": 42, "state": "stopped", "stopped": "SIGTERM: the agent stopped"},
        });
        let said = text(&file, Path::new("/run/imds-guard/status.json"), 130);
        assert!(
            said.starts_with("imds-guard: NOT read from the kernel"),
            "{said}"
        );
        assert!(
            said.contains("as of 2026-11-23T11:40:09Z, 30 s ago"),
            "{said}"
        );
        assert!(
            said.contains("enforcing (mode enforce); policy sha256 ab"),
            "{said}"
        );
        assert!(said.contains("denied 2"), "{said}");
        assert!(said.contains("pid 42 stopped"), "{said}");
        assert!(said.contains("SIGTERM: the agent stopped"), "{said}");
    }
}
