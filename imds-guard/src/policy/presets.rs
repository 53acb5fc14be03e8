//! Presets as data (issue 20): each cloud's credential endpoints, read
//! from `config/presets.toml` (built in, and shipped beside the packaged
//! policy for people to read), and how to recognise the cloud from DMI.
//! No code per cloud: a new cloud is a table in that file.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use super::{Port, address};

/// The presets file, as shipped.
pub const PRESETS_TOML: &str = include_str!("../../../config/presets.toml");
/// Where the kernel shows the machine's DMI strings.
pub const DMI_ROOT: &str = "/sys/class/dmi/id";
/// Reads DMI from another directory (tests, a container with the host's
/// `/sys` mounted elsewhere).
pub const DMI_ROOT_ENV: &str = "IMDS_GUARD_DMI_ROOT";
/// Where a workload preset's `shows` paths are looked for, in place of
/// `/` (tests, a container with the host's `/` mounted elsewhere).
pub const HOST_ROOT_ENV: &str = "IMDS_GUARD_HOST_ROOT";

/// The root `shows` paths are looked for under: [`HOST_ROOT_ENV`] when
/// set, else `/`.
pub fn host_root() -> PathBuf {
    std::env::var_os(HOST_ROOT_ENV).map_or_else(|| PathBuf::from("/"), PathBuf::from)
}
/// What `auto` picks when no cloud is recognised.
pub const FALLBACK: &str = "aws-ec2";

/// Whose secrets a preset's endpoints hand out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The host's own (IMDS, WireServer): every caller is judged.
    Host,
    /// Each workload's own (ECS tasks, EKS pods).
    Workload,
}

/// One preset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preset {
    pub name: String,
    pub cloud: String,
    pub kind: Kind,
    pub serves: String,
    /// The protected endpoints, as addresses and ports.
    pub addresses: Vec<(IpAddr, Option<Port>)>,
    /// What must stay open.
    pub neighbours: Vec<(IpAddr, Option<Port>)>,
    /// Any rule matches; a rule is every (file, pattern) of it.
    pub dmi: Vec<Vec<(String, String)>>,
    /// Workload presets: the cloud whose hosts may run them.
    pub with: Option<String>,
    /// Workload presets: paths whose presence says the host runs them.
    pub shows: Vec<PathBuf>,
}

/// Every preset of [`PRESETS_TOML`], in file order.
pub fn all() -> Result<Vec<Preset>, String> {
    parse(PRESETS_TOML)
}

/// The preset called `name`.
pub fn named(name: &str) -> Result<Option<Preset>, String> {
    Ok(all()?.into_iter().find(|p| p.name == name))
}

/// Parses a presets file.
pub fn parse(text: &str) -> Result<Vec<Preset>, String> {
    let table: toml::Table = text.parse().map_err(|e| format!("presets: {e}"))?;
    table
        .iter()
        .map(|(name, value)| preset(name, value).map_err(|e| format!("presets: [{name}] {e}")))
        .collect()
}

fn preset(name: &str, value: &toml::Value) -> Result<Preset, String> {
    let t = value.as_table().ok_or("is not a table")?;
    const KEYS: &[&str] = &[
        "cloud",
        "kind",
        "serves",
        "addresses",
        "neighbours",
        "dmi",
        "with",
        "shows",
    ];
    if let Some(k) = t.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!("unknown key {k:?}"));
    }
    let string = |key: &str| -> Result<String, String> {
        t.get(key)
            .and_then(toml::Value::as_str)
            .map(str::to_owned)
            .ok_or(format!("{key}: expected a string"))
    };
    let strings = |key: &str| -> Result<Vec<String>, String> {
        match t.get(key) {
            None => Ok(Vec::new()),
            Some(v) => v
                .as_array()
                .ok_or(format!("{key}: expected an array"))?
                .iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_owned)
                        .ok_or(format!("{key}: expected strings"))
                })
                .collect(),
        }
    };
    let endpoints = |key: &str| -> Result<Vec<(IpAddr, Option<Port>)>, String> {
        strings(key)?
            .iter()
            .map(|s| address::parse_endpoint(s).map_err(|e| format!("{key}: {e}")))
            .collect()
    };
    let kind = match string("kind")?.as_str() {
        "host" => Kind::Host,
        "workload" => Kind::Workload,
        other => {
            return Err(format!(
                "kind: {other:?}, expected \"host\" or \"workload\""
            ));
        }
    };
    let dmi = dmi_rules(t.get("dmi"))?;
    let addresses = endpoints("addresses")?;
    if addresses.is_empty() {
        return Err("addresses: none".to_owned());
    }
    Ok(Preset {
        name: name.to_owned(),
        cloud: string("cloud")?,
        kind,
        serves: string("serves")?,
        addresses,
        neighbours: endpoints("neighbours")?,
        dmi,
        with: t
            .get("with")
            .and_then(toml::Value::as_str)
            .map(str::to_owned),
        shows: strings("shows")?.into_iter().map(PathBuf::from).collect(),
    })
}

/// The `dmi` rules of a preset: a list of tables of file → pattern.
fn dmi_rules(value: Option<&toml::Value>) -> Result<Vec<Vec<(String, String)>>, String> {
    let mut dmi = Vec::new();
    if let Some(rules) = value {
        for rule in rules.as_array().ok_or("dmi: expected an array of tables")? {
            let rule = rule.as_table().ok_or("dmi: expected tables")?;
            let mut fields = Vec::new();
            for (file, pattern) in rule {
                let pattern = pattern.as_str().ok_or("dmi: expected string values")?;
                if file.contains('/') || file.starts_with('.') {
                    return Err(format!("dmi: {file:?} is not a file of {DMI_ROOT}"));
                }
                fields.push((file.clone(), pattern.to_owned()));
            }
            if fields.is_empty() {
                return Err("dmi: an empty rule matches every machine".to_owned());
            }
            dmi.push(fields);
        }
    }
    Ok(dmi)
}

/// The machine's DMI strings (file name → trimmed content), those a
/// preset's rules name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dmi(pub BTreeMap<String, String>);

impl Dmi {
    /// Reads the files the presets' rules name from `root`; a file that
    /// cannot be read is absent (and matches no rule).
    pub fn read(root: &Path, presets: &[Preset]) -> Self {
        let mut found = BTreeMap::new();
        for (file, _) in presets.iter().flat_map(|p| p.dmi.iter().flatten()) {
            if let Ok(text) = std::fs::read_to_string(root.join(file)) {
                found.insert(file.clone(), text.trim().to_owned());
            }
        }
        Self(found)
    }

    /// The DMI root: [`DMI_ROOT_ENV`] when set, else [`DMI_ROOT`].
    pub fn root() -> PathBuf {
        std::env::var_os(DMI_ROOT_ENV).map_or_else(|| PathBuf::from(DMI_ROOT), PathBuf::from)
    }
}

/// Whether `value` matches `pattern`: equal, or `*suffix`, or `prefix*`.
fn matches(pattern: &str, value: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else {
        value == pattern
    }
}

/// The host preset whose DMI rules `dmi` matches, with the rule that
/// matched (as `file=value` pairs), if any.
pub fn recognise<'a>(presets: &'a [Preset], dmi: &Dmi) -> Option<(&'a Preset, String)> {
    presets.iter().find_map(|p| {
        let rule = p.dmi.iter().find(|rule| {
            rule.iter()
                .all(|(file, pattern)| dmi.0.get(file).is_some_and(|v| matches(pattern, v)))
        })?;
        let said: Vec<String> = rule
            .iter()
            .map(|(file, _)| format!("{file}={:?}", dmi.0[file]))
            .collect();
        Some((p, said.join(" ")))
    })
}

/// What `auto` picks on a machine with `dmi`: the recognised cloud's host
/// preset, else [`FALLBACK`]; and why, in words.
pub fn auto<'a>(presets: &'a [Preset], dmi: &Dmi) -> Option<(&'a Preset, String)> {
    match recognise(presets, dmi) {
        Some((p, why)) => Some((p, format!("DMI {why}"))),
        None => presets.iter().find(|p| p.name == FALLBACK).map(|p| {
            (
                p,
                "no cloud recognised from DMI: EC2's addresses".to_owned(),
            )
        }),
    }
}

/// The workload presets `auto` adds to `cloud`'s host preset: those of
/// that cloud (`with`) one of whose `shows` paths exists under `root`
/// (the host runs them), each with the path that showed it.
pub fn shown<'a>(presets: &'a [Preset], cloud: &str, root: &Path) -> Vec<(&'a Preset, String)> {
    presets
        .iter()
        .filter(|p| p.kind == Kind::Workload && p.with.as_deref() == Some(cloud))
        .filter_map(|p| {
            let path = p.shows.iter().find(|path| {
                let rel = path.strip_prefix("/").unwrap_or(path);
                root.join(rel).exists()
            })?;
            Some((p, format!("{} exists", path.display())))
        })
        .collect()
}

/// Whether two DMI patterns can match one string.
fn compatible(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(x), Some(y)) => x.ends_with(y) || y.ends_with(x),
        (Some(suffix), None) => matches(a, b) || b.ends_with('*') || suffix.is_empty(),
        (None, Some(_)) => compatible(b, a),
        (None, None) => match (a.strip_suffix('*'), b.strip_suffix('*')) {
            (Some(x), Some(y)) => x.starts_with(y) || y.starts_with(x),
            (Some(_), None) => matches(a, b),
            (None, Some(_)) => matches(b, a),
            (None, None) => a == b,
        },
    }
}

/// Whether some machine could match both rules: every file both name has
/// patterns that can match one string.
pub fn overlap(a: &[(String, String)], b: &[(String, String)]) -> bool {
    a.iter().all(|(file, pa)| {
        b.iter()
            .filter(|(f, _)| f == file)
            .all(|(_, pb)| compatible(pa, pb))
    })
}

#[cfg(test)]
pub(super) mod tests;
