//! A digest of what a resolved policy makes the kernel do, so that `status`
//! and metrics can say which policy is in force and config management can
//! compare it with what it shipped.
//!
//! It covers the decision only (mode, endpoints, default, every uid and gid
//! rule and where it applies, the members of denied groups, the cgroup
//! patterns, the forward path), in a canonical order: reformatting the
//! file, reordering entries or renaming a user to the same uid leaves it
//! unchanged; a membership that changed in the group database changes it,
//! and so does moving an entry between `[allow]` and `[allow.host]`.
//!
//! Lines that only some policies need (a host-only rule, members, cgroup
//! rules, the forward path) are written only by those: the digests of the
//! others stay what earlier versions printed, which config management may
//! have recorded.

use std::fmt::Write as _;

use sha2::{Digest as _, Sha256};

use super::{Action, Mode, Policy, Scope};

impl Policy {
    /// The protected endpoints, sorted, one line each: a bare address as
    /// before endpoints had ports, so a policy without ports keeps its
    /// digest.
    fn write_endpoints(&self, text: &mut String) {
        let mut endpoints: Vec<_> = self
            .spec
            .endpoints
            .iter()
            .map(|e| (e.addr, e.port))
            .collect();
        endpoints.sort();
        for (addr, port) in endpoints {
            let e = super::Endpoint {
                addr,
                port,
                at: None,
            };
            // A workload endpoint opens to workloads what a host one
            // judges: another decision for the same address.
            let workload = self.spec.kind_of(addr) == super::EndpointKind::Workload;
            let _ = writeln!(
                *text,
                "endpoint {e}{}",
                if workload { " workload" } else { "" }
            );
        }
    }

    /// SHA-256 of the canonical form of the decision this policy makes.
    pub fn digest(&self) -> [u8; 32] {
        // The canonical text is hashed as it is written, a chunk at a
        // time: a policy of 100,000 uids would make it megabytes.
        let mut hasher = Sha256::new();
        let mut text = String::with_capacity(2 * CHUNK);
        let mode = match self.spec.mode {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        };
        let word = |a: Action| match a {
            Action::Allow => "allow",
            Action::Deny => "deny",
        };
        let _ = writeln!(text, "imds-guard policy v1");
        let _ = writeln!(text, "mode {mode}");
        let _ = writeln!(text, "default {}", word(self.default_action));
        self.write_endpoints(&mut text);
        // The rules are most of the text: written without `fmt`, which
        // costs more than the hash for a policy of 100,000 uids.
        for (noun, rules) in [("uid ", &self.uids), ("gid ", &self.gids)] {
            for (&id, rule) in rules {
                text.push_str(noun);
                push_decimal(&mut text, id);
                text.push(' ');
                text.push_str(word(rule.action));
                // `[allow.host]` admits the id on the host only: another
                // decision than `[allow]`'s for the same id.
                if self.scope_of(rule) == Scope::Host {
                    text.push_str(" host");
                }
                text.push('\n');
                flush(&mut hasher, &mut text);
            }
        }
        // Only a policy whose denied groups have members has these lines,
        // as only one with cgroup rules has the next: the digests of the
        // others stay what they were.
        for (&uid, &gid) in &self.members {
            text.push_str("member ");
            push_decimal(&mut text, uid);
            text.push(' ');
            push_decimal(&mut text, gid);
            text.push('\n');
            flush(&mut hasher, &mut text);
        }
        // Only a policy with cgroup rules has these lines: the digests of
        // the others stay what they were.
        let mut cgroups: Vec<String> = self
            .cgroups
            .fixed
            .iter()
            .map(|r| format!("cgroup {} {}", word(r.action), r.pattern))
            .chain(
                self.cgroups
                    .pods
                    .iter()
                    .map(|(pod, _)| format!("pod allow {pod}")),
            )
            .collect();
        cgroups.sort();
        cgroups.dedup();
        for line in cgroups {
            let _ = writeln!(text, "{line}");
        }
        let forward = &self.spec.forward;
        let mut interfaces: Vec<_> = forward.interfaces.iter().map(|i| &i.name).collect();
        interfaces.sort();
        for i in interfaces {
            let _ = writeln!(text, "forward interface {i}");
        }
        let mut sources: Vec<_> = forward.sources.iter().map(|s| s.prefix).collect();
        sources.sort();
        for s in sources {
            let _ = writeln!(text, "forward source {s}");
        }
        // Only a policy with request-level tables has these lines: the
        // digests of the others stay what they were.
        self.spec.requests.write_digest(&self.spec, &mut text);
        hasher.update(text.as_bytes());
        hasher.finalize().into()
    }
}

/// Bytes of canonical text gathered before they are hashed.
const CHUNK: usize = 64 * 1024;

/// Hashes `text` and empties it once it holds a chunk.
fn flush(hasher: &mut Sha256, text: &mut String) {
    if text.len() >= CHUNK {
        hasher.update(text.as_bytes());
        text.clear();
    }
}

/// `n` in decimal, as `{n}` writes it.
fn push_decimal(text: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        text.push(char::from(d));
    }
}

/// Lowercase hex, as `sha256sum` prints it.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::policy::{FakeResolver, PolicySpec};

    fn digest(toml: &str) -> String {
        let r = FakeResolver::new(&[("root", 0), ("alice", 1000)], &[]);
        let p = PolicySpec::parse(Path::new("p.toml"), toml)
            .expect("valid")
            .resolve(&r)
            .expect("resolves");
        super::hex(&p.digest())
    }

    #[test]
    fn decimals_are_written_as_format_writes_them() {
        for n in [0, 7, 10, 99, 100, 65_534, 4_294_967_295] {
            let mut text = String::new();
            super::push_decimal(&mut text, n);
            assert_eq!(text, n.to_string());
        }
    }

    /// `sha256sum` of the canonical text, written out by hand:
    /// "imds-guard policy v1\nmode enforce\ndefault deny\nendpoint
    /// 169.254.169.254\nendpoint fd00:ec2::254\nuid 0 allow\nuid 1000
    /// allow\ngid 5 deny\n".
    const EXPECTED: &str = "48e97ee6214c52ca7bb83cd88c04fcefb23e875adb75fd6e19bce73916748c0d";

    #[test]
    fn the_canonical_form_is_unchanged() {
        // Config management compares digests across versions: this one is
        // what 0.1 printed for this policy.
        let d = digest("[allow]\nusers = [\"root\"]\nuids = [1000]\n[deny]\ngids = [5]\n");
        assert_eq!(d, EXPECTED);
    }

    #[test]
    fn a_text_of_many_chunks_hashes_as_one() {
        use sha2::{Digest as _, Sha256};
        let uids: Vec<String> = (0..20_000).map(|n| (n * 3).to_string()).collect();
        let mut text = "imds-guard policy v1\nmode enforce\ndefault deny\nendpoint \
                        169.254.169.254\nendpoint fd00:ec2::254\n"
            .to_owned();
        for uid in &uids {
            text.push_str(&format!("uid {uid} allow\n"));
        }
        assert!(text.len() > 3 * super::CHUNK);
        let whole = super::hex(&Sha256::digest(text.as_bytes()));
        assert_eq!(
            digest(&format!("[allow]\nuids = [{}]\n", uids.join(", "))),
            whole
        );
    }

    #[test]
    fn a_membership_that_changed_changes_it() {
        let text = "[allow]\nuids = [1000]\n[deny]\ngids = [5]\n";
        let resolved = |members: &[(u32, u32)]| {
            let r = FakeResolver::new(&[], &[]).with_members(members);
            let p = PolicySpec::parse(Path::new("p.toml"), text)
                .expect("valid")
                .resolve(&r)
                .expect("resolves");
            super::hex(&p.digest())
        };
        assert_eq!(resolved(&[]), WITHOUT_MEMBERS);
        assert_ne!(resolved(&[(1000, 5)]), resolved(&[]));
        assert_ne!(resolved(&[(1000, 5)]), resolved(&[(1001, 5)]));
    }

    /// `sha256sum` of "imds-guard policy v1\nmode enforce\ndefault
    /// deny\nendpoint 169.254.169.254\nendpoint fd00:ec2::254\nuid 1000
    /// allow\ngid 5 deny\n": that policy's digest when its denied group
    /// has no member, as before members counted.
    const WITHOUT_MEMBERS: &str =
        "7d9215a1fb2aa664ad38ec47f904400edb81cf608212a2f995216f15935ca824";

    #[test]
    fn where_a_rule_applies_changes_it() {
        let anywhere = digest("[allow]\nusers = [\"root\"]\n");
        let host = digest("[allow.host]\nusers = [\"root\"]\n");
        // Root in a container is refused by one and not by the other.
        assert_ne!(anywhere, host);
        assert_ne!(digest("[allow]\nuids = [0]\n"), host);
        // A name and its id in the same table decide the same.
        assert_eq!(host, digest("[allow.host]\nuids = [0]\n"));
        assert_ne!(
            digest("[allow]\nuids = [1000]\n[allow.host]\nusers = [\"root\"]\n"),
            digest("[allow]\nusers = [\"root\"]\n[allow.host]\nuids = [1000]\n")
        );
        // A policy with no host-only rule keeps the digest it had.
        assert_eq!(
            digest("[allow]\nusers = [\"root\"]\nuids = [1000]\n[deny]\ngids = [5]\n"),
            EXPECTED
        );
    }

    #[test]
    fn a_workload_endpoint_is_another_decision_than_a_host_one_at_its_address() {
        // The same address and port, one judged for everyone, the other
        // open to workloads.
        assert_ne!(
            digest("[endpoints]\naddresses = [\"169.254.170.2:80/tcp\"]\n[allow]\nuids = [0]\n"),
            digest("[endpoints]\npresets = [\"aws-ecs\"]\n[allow]\nuids = [0]\n")
        );
    }

    #[test]
    fn a_pod_pattern_is_another_decision_than_the_name_it_starts_with() {
        let exact = digest("[allow]\npods = [\"kube-system/aws-node\"]\n");
        let pattern = digest("[allow]\npods = [\"kube-system/aws-node*\"]\n");
        assert_ne!(exact, pattern);
        assert_ne!(
            pattern,
            digest("[allow]\npods = [\"kube-system/aws-node-*\"]\n")
        );
    }

    /// Two values of the key named `leaf` (the last part of a key path),
    /// each a valid policy's, that decide differently.
    fn values(leaf: &str) -> Option<[&'static str; 2]> {
        Some(match leaf {
            "mode" => ["\"enforce\"", "\"audit\""],
            "addresses" => ["[\"169.254.169.254\"]", "[\"fd00:ec2::254\"]"],
            "presets" => ["[\"gcp\"]", "[\"scaleway\"]"],
            "users" => ["[\"alice\"]", "[\"bob\"]"],
            "uids" => ["[1000]", "[1001]"],
            "groups" => ["[\"staff\"]", "[\"adm\"]"],
            "gids" => ["[50]", "[4]"],
            "units" => ["[\"a.service\"]", "[\"b.service\"]"],
            "cgroups" => ["[\"/a/**\"]", "[\"/b/**\"]"],
            "pods" => ["[\"ns/a\"]", "[\"ns/b\"]"],
            "allow_interfaces" => ["[\"eth1\"]", "[\"eth2\"]"],
            "allow_sources" => ["[\"10.8.0.0/16\"]", "[\"10.9.0.0/16\"]"],
            "rules" => ["[\"GET /latest/meta-data/\"]", "[\"GET /latest/dynamic/\"]"],
            "host" | "required" | "whole_service" => ["true", "false"],
            "imdsv2" => ["\"required\"", "\"optional\""],
            "exempt" | "require" => ["{ uids = [4242] }", "{}"],
            _ => return None,
        })
    }

    /// A policy with `key` (a dotted path) set to `value`, and whatever
    /// else it needs to decide something.
    fn with_key(key: &str, value: &str) -> String {
        let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key));
        let rules = ["allow", "allow.host", "deny"].contains(&table);
        let filler = match table {
            _ if rules => "",
            // `[imdsv2]` names allowed entries.
            "imdsv2" => "[allow]\nuids = [4242]\n",
            _ => "[deny]\nuids = [4242]\n",
        };
        // What the key needs beside it in its table: a request table
        // has rules, `exempt` goes with required = true.
        let prelude = match (table, leaf) {
            ("requests.r", "rules") => "",
            ("requests.r", _) => "rules = [\"GET /latest/meta-data/\"]\n",
            ("imdsv2", "exempt") => "required = true\n",
            _ => "",
        };
        if table.is_empty() {
            format!("{leaf} = {value}\n{filler}")
        } else {
            format!("[{table}]\n{prelude}{leaf} = {value}\n{filler}")
        }
    }

    #[test]
    fn every_key_of_the_policy_reference_changes_it() {
        let r = FakeResolver::new(
            &[("root", 0), ("alice", 1000), ("bob", 1001)],
            &[("staff", 50), ("adm", 4)],
        )
        .with_units(&[
            ("a.service", "/system.slice/a.service"),
            ("b.service", "/system.slice/b.service"),
        ]);
        let hex = |text: &str| {
            let p = PolicySpec::parse(Path::new("p.toml"), text)
                .unwrap_or_else(|e| panic!("{text:?} does not validate: {e}"))
                .resolve(&r)
                .unwrap_or_else(|e| panic!("{text:?} does not resolve: {e}"));
            super::hex(&p.digest())
        };
        let keys = crate::policy::validate::every_key();
        for key in [
            "mode",
            "endpoints.addresses",
            "allow.users",
            "allow.host.gids",
            "deny.cgroups",
            "forward.allow_sources",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} is not in {keys:?}");
        }
        for key in &keys {
            let leaf = key.rsplit('.').next().unwrap_or(key);
            let Some([a, b]) = values(leaf) else {
                panic!(
                    "the policy key {key} has no digest case: add two values that decide \
                     differently to `values`, and make the digest cover the key"
                );
            };
            let (a, b) = (with_key(key, a), with_key(key, b));
            assert_ne!(hex(&a), hex(&b), "{key}: {a:?} and {b:?} have one digest");
        }
        // The same value under the same key in another table (`[allow]`,
        // `[allow.host]`, `[deny]`) is another decision.
        for (i, key) in keys.iter().enumerate() {
            let leaf = key.rsplit('.').next().unwrap_or(key);
            for other in keys[i + 1..]
                .iter()
                .filter(|k| k.ends_with(&format!(".{leaf}")))
            {
                let [value, _] = values(leaf).unwrap_or_default();
                let (a, b) = (with_key(key, value), with_key(other, value));
                assert_ne!(
                    hex(&a),
                    hex(&b),
                    "{key} and {other}: {a:?} and {b:?} have one digest"
                );
            }
        }
    }

    #[test]
    fn covers_the_decision_not_the_spelling() {
        let a = digest("[allow]\nusers = [\"root\"]\nuids = [1000]\n");
        assert_eq!(a.len(), 64);
        assert_eq!(a, digest("# same\n[allow]\nuids = [1000, 0]\n"));
        assert_eq!(a, digest("[allow]\nusers = [\"alice\", \"root\"]\n"));
        assert_ne!(a, digest("[allow]\nuids = [1000]\n"));
        assert_ne!(a, digest("mode = \"audit\"\n[allow]\nuids = [0, 1000]\n"));
        assert_ne!(
            a,
            digest("[endpoints]\naddresses = [\"169.254.169.254\"]\n[allow]\nuids = [0, 1000]\n")
        );
        let forward = "[allow]\nuids = [0, 1000]\n[forward]\nallow_sources = [\"10.8.0.0/16\"]\n";
        assert_ne!(a, digest(forward));
        assert_eq!(
            digest(forward),
            digest("[forward]\nallow_sources = [\"10.8.0.0/16\"]\n[allow]\nuids = [1000, 0]\n")
        );
    }
}
