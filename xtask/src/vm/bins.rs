//! The binaries the guest runs: the agent, the probe, the other helpers of
//! `e2e/src/bin/`, and one test binary per suite of `e2e/tests/`, either
//! built from this checkout (their paths from cargo's messages, never
//! guessed from hashes), cross-built from it for another CPU by `cargo
//! xtask dist --e2e`'s route, or taken from a cargo profile directory built
//! elsewhere (`--bins`).
//!
//! The guest puts each binary at its path on the host, because the tests
//! name some by the path they had when the tests were built
//! (`env!("CARGO_BIN_EXE_imds-probe")`): a copy elsewhere is not found.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Read as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::SystemTime,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    arch::Arch,
    process::{cargo, stdout, workspace_root},
};

/// The agent's and the probe's binary names.
pub const AGENT: &str = "imds-guard";
pub const PROBE: &str = "imds-probe";

/// One test binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suite {
    /// The test target's name: its file in `e2e/tests/`.
    pub name: String,
    pub path: PathBuf,
}

pub struct Payload {
    pub agent: PathBuf,
    pub probe: PathBuf,
    /// The other binaries of `e2e/src/bin/` (`imds-uring`, ...).
    pub helpers: Vec<PathBuf>,
    pub suites: Vec<Suite>,
}

/// Builds the agent, the probe and the e2e test binaries, as `cargo xtask
/// test` does, and picks the suites (all when `only` is empty).
pub fn build(only: &[String]) -> Result<Payload> {
    eprintln!("xtask: vm: building the agent, the probe and the e2e suites");
    // JSON on stdout; cargo's progress and diagnostics stay on stderr.
    let bins = stdout(
        cargo()
            .args([
                "build",
                "--bins",
                "--message-format=json-render-diagnostics",
            ])
            .stderr(Stdio::inherit()),
    )?;
    let tests = stdout(
        cargo()
            .args([
                "test",
                "-p",
                "imds-guard-e2e",
                "--no-run",
                "--message-format=json-render-diagnostics",
            ])
            .stderr(Stdio::inherit()),
    )?;
    let bins = executables(&bins, "bin");
    let find = |name: &str| {
        bins.get(name)
            .cloned()
            .with_context(|| format!("cargo built no `{name}` binary"))
    };
    let all = executables(&tests, "test")
        .into_iter()
        .map(|(name, path)| Suite { name, path })
        .collect();
    Ok(Payload {
        agent: find(AGENT)?,
        probe: find(PROBE)?,
        helpers: helper_names()?
            .iter()
            .map(|h| find(h))
            .collect::<Result<_>>()?,
        suites: select(all, only)?,
    })
}

/// Cross-builds the binaries for `arch` (another CPU than this one) as
/// `cargo xtask dist --arch ARCH --e2e` does, and takes them where they
/// were built.
pub fn cross_build(arch: Arch, only: &[String]) -> Result<Payload> {
    eprintln!(
        "xtask: vm: cross-building the agent, the probe and the e2e suites for {}",
        arch.rust()
    );
    let built = crate::dist::e2e_binaries(arch)?;
    let all = built
        .tests
        .into_iter()
        .map(|(name, path)| Suite { name, path })
        .collect();
    in_profile(&built.profile, all, only)
}

/// Takes the binaries from a cargo profile directory: `imds-guard` and
/// `imds-probe` in it, each suite the newest `deps/<suite>-<hash>` for the
/// suite files of `e2e/tests/`.
pub fn from_dir(dir: &Path, only: &[String]) -> Result<Payload> {
    let tests = workspace_root().join("e2e/tests");
    let mut names: Vec<String> = fs::read_dir(&tests)
        .with_context(|| format!("cannot list {}", tests.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_suffix(".rs")
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    let deps = dir.join("deps");
    let files: Vec<(String, SystemTime)> = fs::read_dir(&deps)
        .with_context(|| format!("cannot list {}", deps.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let modified = e.metadata().and_then(|m| m.modified()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), modified))
        })
        .collect();
    let mut all = Vec::new();
    for name in names {
        match newest(&name, &files) {
            Some(file) => all.push(Suite {
                name,
                path: deps.join(file),
            }),
            None => bail!(
                "{} has no test binary for the `{name}` suite",
                deps.display()
            ),
        }
    }
    in_profile(dir, all, only)
}

/// The payload of `suites` (those in `only`) with the agent, the probe and
/// the helpers of the profile directory `dir`.
fn in_profile(dir: &Path, suites: Vec<Suite>, only: &[String]) -> Result<Payload> {
    let file = |name: &str| {
        let path = dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            bail!("{} is missing", path.display())
        }
    };
    Ok(Payload {
        agent: file(AGENT)?,
        probe: file(PROBE)?,
        helpers: helper_names()?
            .iter()
            .map(|h| file(h))
            .collect::<Result<_>>()?,
        suites: select(suites, only)?,
    })
}

/// The binaries of `e2e/src/bin/` but the probe: every one, so that a test
/// may run a new helper by its build path without a change here.
fn helper_names() -> Result<Vec<String>> {
    let dir = workspace_root().join("e2e/src/bin");
    let files = fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned());
    Ok(helpers(files))
}

/// The names of the `.rs` files among `files`, but the probe's, sorted.
fn helpers(files: impl Iterator<Item = String>) -> Vec<String> {
    let mut names: Vec<String> = files
        .filter_map(|f| f.strip_suffix(".rs").map(str::to_owned))
        .filter(|n| n != PROBE)
        .collect();
    names.sort();
    names
}

impl Payload {
    /// Fails unless every binary is an ELF executable for `arch`: a guest
    /// would only say "exec format error", suite after suite.
    pub fn check_arch(&self, arch: Arch) -> Result<()> {
        let all = [&self.agent, &self.probe]
            .into_iter()
            .chain(&self.helpers)
            .chain(self.suites.iter().map(|s| &s.path));
        for path in all {
            let mut head = [0u8; 20];
            File::open(path)
                .and_then(|mut f| f.read_exact(&mut head))
                .with_context(|| format!("cannot read {}", path.display()))?;
            let want = arch.e_machine();
            match machine(&head) {
                Some(m) if m == want => {}
                Some(m) => bail!(
                    "{} is built for ELF machine {m:#x}, not {} ({want:#x})",
                    path.display(),
                    arch.rust()
                ),
                None => bail!("{} is not a 64-bit little-endian ELF file", path.display()),
            }
        }
        Ok(())
    }
}

/// `e_machine` of a 64-bit little-endian ELF header.
fn machine(head: &[u8; 20]) -> Option<u16> {
    let elf64_le = head.starts_with(b"\x7fELF") && head[4] == 2 && head[5] == 1;
    elf64_le.then(|| u16::from_le_bytes([head[18], head[19]]))
}

/// Suites that run natively only: `watch` tests inotify and the reload the
/// `lifecycle` suite already runs in the guest, nothing that differs by
/// kernel, and the guest's time is CI's scarcest.
const NATIVE_ONLY: &[&str] = &["watch"];

/// The suite that runs the container image (`cargo xtask image`, built
/// for this machine's CPU only) in the guest.
pub const IMAGE_SUITE: &str = "kubernetes";

/// Keeps the suites named in `only`, in that order (all but
/// [`NATIVE_ONLY`] when it is empty).
fn select(all: Vec<Suite>, only: &[String]) -> Result<Vec<Suite>> {
    if only.is_empty() {
        return Ok(all
            .into_iter()
            .filter(|s| !NATIVE_ONLY.contains(&s.name.as_str()))
            .collect());
    }
    only.iter()
        .map(|name| match all.iter().find(|s| &s.name == name) {
            Some(s) => Ok(s.clone()),
            None => {
                let known: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
                bail!("no suite `{name}`; there are: {}", known.join(", "))
            }
        })
        .collect()
}

impl Payload {
    /// Leaves out the suites named in `skip` (`--skip-suite`), each of
    /// which must be one of them.
    pub fn skip(&mut self, skip: &[String]) -> Result<()> {
        for name in skip {
            if !self.suites.iter().any(|s| &s.name == name) {
                let known: Vec<&str> = self.suites.iter().map(|s| s.name.as_str()).collect();
                bail!("no suite `{name}` to skip; there are: {}", known.join(", "));
            }
        }
        self.suites.retain(|s| !skip.contains(&s.name));
        Ok(())
    }
}

/// Executables of cargo's JSON messages whose target kind is `kind`, by
/// target name.
fn executables(messages: &str, kind: &str) -> BTreeMap<String, PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == kind))
        })
        .filter_map(|m| {
            Some((
                m["target"]["name"].as_str()?.to_owned(),
                PathBuf::from(m["executable"].as_str()?),
            ))
        })
        .collect()
}

/// The newest of `files` named `<suite>-<16 hex digits>` (cargo's test
/// binaries; their `.d` files and other suites' do not match).
fn newest<'a>(suite: &str, files: &'a [(String, SystemTime)]) -> Option<&'a str> {
    files
        .iter()
        .filter(|(f, _)| {
            f.strip_prefix(suite)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|hash| hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .max_by_key(|(_, t)| *t)
        .map(|(f, _)| f.as_str())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn test_executables_from_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"imds_guard_e2e"},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"guard"},"executable":"/t/debug/deps/guard-0123456789abcdef"}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"imds-probe"},"executable":"/t/debug/deps/imds_probe-fedcba9876543210"}
{"reason":"compiler-message","message":{}}
{"reason":"build-finished","success":true}"#;
        let tests = executables(messages, "test");
        assert_eq!(tests.len(), 1);
        assert_eq!(
            tests["guard"],
            PathBuf::from("/t/debug/deps/guard-0123456789abcdef")
        );
        assert_eq!(executables(messages, "bin").len(), 1);
    }

    #[test]
    fn elf_headers_tell_the_architecture() {
        let mut head = [0u8; 20];
        head[..6].copy_from_slice(b"\x7fELF\x02\x01");
        head[18] = 183;
        assert_eq!(machine(&head), Some(Arch::Aarch64.e_machine()));
        head[18] = 62;
        assert_eq!(machine(&head), Some(Arch::X86_64.e_machine()));
        head[4] = 1; // 32-bit
        assert_eq!(machine(&head), None);
        assert_eq!(machine(&[b'#'; 20]), None);
    }

    #[test]
    fn newest_binary_of_a_suite_by_exact_name() {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let files = vec![
            ("guard-0123456789abcdef".to_owned(), t(1)),
            ("guard-0123456789abcdee".to_owned(), t(2)),
            ("guard-0123456789abcdee.d".to_owned(), t(3)),
            ("guard_extra-0123456789abcdef".to_owned(), t(4)),
            ("libguard-0123456789abcdef.rlib".to_owned(), t(5)),
        ];
        assert_eq!(newest("guard", &files), Some("guard-0123456789abcdee"));
        assert_eq!(newest("storm", &files), None);
    }

    #[test]
    fn helpers_are_the_binaries_but_the_probe() {
        let files = [
            "imds-uring.rs",
            "imds-probe.rs",
            "imds-guard-demo.rs",
            "README",
        ];
        assert_eq!(
            helpers(files.iter().map(|f| (*f).to_owned())),
            ["imds-guard-demo", "imds-uring"]
        );
    }

    /// A binary a suite names by its build path and the guest does not
    /// carry fails that suite in the guest only ("No such file").
    #[test]
    fn every_binary_the_suites_name_by_build_path_is_carried() {
        let mut carried = helper_names().expect("e2e/src/bin lists");
        carried.push(PROBE.to_owned());
        let tests = workspace_root().join("e2e/tests");
        let mut named = Vec::new();
        for entry in fs::read_dir(&tests).expect("e2e/tests lists") {
            let path = entry.expect("an entry").path();
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            for part in text.split("CARGO_BIN_EXE_").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
                named.push((name, path.clone()));
            }
        }
        assert!(
            named.iter().any(|(n, _)| n == "imds-uring"),
            "the scan finds nothing: {named:?}"
        );
        for (name, path) in named {
            assert!(
                carried.contains(&name),
                "{} runs {name}, which the guest does not carry",
                path.display()
            );
        }
    }

    #[test]
    fn a_profile_directory_gives_the_agent_probe_and_helpers() {
        let dir = std::env::temp_dir().join(format!("xtask-bins-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("a temporary directory");
        let suites = vec![Suite {
            name: "guard".into(),
            path: dir.join("deps/guard-0123456789abcdef"),
        }];
        // Nothing built yet: the agent is missing, and said so.
        let err = in_profile(&dir, suites.clone(), &[])
            .err()
            .expect("missing");
        assert!(format!("{err}").contains(AGENT), "{err}");
        let mut names = helper_names().expect("e2e/src/bin lists");
        names.extend([AGENT.to_owned(), PROBE.to_owned()]);
        for name in &names {
            fs::write(dir.join(name), b"").expect("a file");
        }
        let p = in_profile(&dir, suites.clone(), &[]);
        let _ = fs::remove_dir_all(&dir);
        let p = p.expect("everything is there");
        assert_eq!(p.agent, dir.join(AGENT));
        assert_eq!(p.probe, dir.join(PROBE));
        assert!(
            p.helpers.contains(&dir.join("imds-uring")),
            "{:?}",
            p.helpers
        );
        assert_eq!(p.suites, suites);
    }

    #[test]
    fn selected_suites_keep_the_order_asked() {
        let s = |n: &str| Suite {
            name: n.into(),
            path: PathBuf::from(n),
        };
        let all = vec![s("guard"), s("kernel"), s("lifecycle")];
        let picked = select(all.clone(), &["lifecycle".into(), "guard".into()]).expect("known");
        assert_eq!(picked, vec![s("lifecycle"), s("guard")]);
        assert_eq!(select(all.clone(), &[]).expect("all"), all);
        assert!(select(all, &["nope".into()]).is_err());
    }

    #[test]
    fn the_native_only_suites_run_in_a_guest_only_when_asked_for() {
        let s = |n: &str| Suite {
            name: n.into(),
            path: PathBuf::from(n),
        };
        let all = vec![s("guard"), s("watch")];
        assert_eq!(select(all.clone(), &[]).expect("all"), vec![s("guard")]);
        let asked = select(all, &["watch".into()]).expect("known");
        assert_eq!(asked, vec![s("watch")]);
    }

    #[test]
    fn skipped_suites_are_left_out_and_must_exist() {
        let s = |n: &str| Suite {
            name: n.into(),
            path: PathBuf::from(n),
        };
        let mut p = Payload {
            agent: PathBuf::from("a"),
            probe: PathBuf::from("p"),
            helpers: Vec::new(),
            suites: vec![s("guard"), s("harness"), s("kernel")],
        };
        p.skip(&["harness".into()]).expect("known");
        assert_eq!(p.suites, vec![s("guard"), s("kernel")]);
        let e = p.skip(&["harness".into()]).expect_err("left out already");
        assert!(
            e.to_string().starts_with("no suite `harness` to skip"),
            "{e}"
        );
        assert_eq!(p.suites.len(), 2, "nothing left out on an error");
    }
}
