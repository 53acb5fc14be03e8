//! The cgroup pattern language, as the agent reads and matches it (the
//! programs match the same language through lookup tables, see
//! `kernel/classify/tables.rs`; a test holds the two to the same answers).
//!
//! A pattern is a cgroup path from the cgroup v2 root: `/` then components
//! separated by `/`. A component is a literal (`docker.service`) or one
//! `*` between a literal prefix and suffix (`docker-*.scope`), which
//! matches any name with that prefix and suffix that is long enough to hold
//! both; `*` never crosses a `/`. A final `**` matches the cgroup the
//! pattern names so far and every cgroup below it (`/kubepods.slice/**`);
//! `/**` is every cgroup. `/` alone is the root cgroup.

use std::fmt;

use imds_guard_common::{MAX_LITERAL, MAX_PATTERN_DEPTH};

/// One component of a pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// A name, exactly.
    Literal(Vec<u8>),
    /// `prefix*suffix`.
    Glob { prefix: Vec<u8>, suffix: Vec<u8> },
}

/// A parsed pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern {
    pub components: Vec<Component>,
    /// Ends with `**`: the cgroup and every descendant.
    pub subtree: bool,
}

impl Component {
    /// Whether the cgroup name `name` matches.
    pub fn matches(&self, name: &[u8]) -> bool {
        match self {
            Self::Literal(literal) => name == literal.as_slice(),
            Self::Glob { prefix, suffix } => {
                name.len() >= prefix.len() + suffix.len()
                    && name.starts_with(prefix)
                    && name.ends_with(suffix)
            }
        }
    }

    /// The literal bytes before the `*` (all of a literal).
    pub fn prefix(&self) -> &[u8] {
        match self {
            Self::Literal(literal) => literal,
            Self::Glob { prefix, .. } => prefix,
        }
    }

    /// The literal bytes after the `*` (none for a literal).
    pub fn suffix(&self) -> &[u8] {
        match self {
            Self::Literal(_) => &[],
            Self::Glob { suffix, .. } => suffix,
        }
    }
}

impl Pattern {
    /// The cgroup at `path` and every cgroup below it: what a unit names.
    pub fn subtree_of(path: &str) -> Result<Self, String> {
        let mut pattern = Self::parse(path)?;
        if pattern
            .components
            .iter()
            .any(|c| matches!(c, Component::Glob { .. }))
        {
            return Err(format!("the cgroup path {path:?} has a *"));
        }
        pattern.subtree = true;
        Ok(pattern)
    }

    /// Parses `text`; the error says what is wrong, for a diagnostic.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "{text:?} does not start with /: a pattern is a cgroup path from the cgroup v2 \
                 root, such as /system.slice/NAME"
            ));
        };
        if text.contains('\0') {
            return Err(format!("{text:?} contains a NUL character"));
        }
        if text.contains('\n') {
            return Err(format!(
                "{text:?} contains a newline, which no cgroup name can (the kernel refuses it)"
            ));
        }
        let mut pattern = Pattern {
            components: Vec::new(),
            subtree: false,
        };
        if rest.is_empty() {
            return Ok(pattern);
        }
        let parts: Vec<&str> = rest.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            if *part == "**" {
                if i + 1 != parts.len() {
                    return Err(format!(
                        "{text:?} has ** before its end: ** may only be the last component"
                    ));
                }
                pattern.subtree = true;
                break;
            }
            pattern.components.push(component(text, part)?);
        }
        let depth = pattern.components.len();
        if depth > MAX_PATTERN_DEPTH as usize {
            return Err(format!(
                "{text:?} has {depth} components, more than the {MAX_PATTERN_DEPTH} a pattern \
                 may have (a final ** does not count)"
            ));
        }
        Ok(pattern)
    }

    /// Whether the cgroup at `path` (`/` and components, as read from the
    /// cgroup2 mount) matches.
    pub fn matches(&self, path: &[&[u8]]) -> bool {
        let n = self.components.len();
        let long_enough = if self.subtree {
            path.len() >= n
        } else {
            path.len() == n
        };
        long_enough
            && self
                .components
                .iter()
                .zip(path)
                .all(|(c, name)| c.matches(name))
    }
}

/// One component of `text`, checked.
fn component(text: &str, part: &str) -> Result<Component, String> {
    if part.is_empty() {
        return Err(format!(
            "{text:?} has an empty component (a / at the end, or two in a row)"
        ));
    }
    if part == "." || part == ".." {
        return Err(format!(
            "{text:?} has a component {part:?}, which no cgroup is named"
        ));
    }
    if part.contains("**") {
        return Err(format!(
            "{text:?} has ** inside the component {part:?}: ** stands alone, as the last \
             component"
        ));
    }
    let literal_ok = |literal: &str| {
        if literal.len() > MAX_LITERAL {
            Err(format!(
                "{text:?}: the component {part:?} has a literal part of {} bytes, more than \
                 {MAX_LITERAL}",
                literal.len()
            ))
        } else {
            Ok(literal.as_bytes().to_vec())
        }
    };
    match part.split_once('*') {
        None => Ok(Component::Literal(literal_ok(part)?)),
        Some((_, suffix)) if suffix.contains('*') => Err(format!(
            "{text:?}: the component {part:?} has more than one *; a component is a name or \
             prefix*suffix"
        )),
        Some((prefix, suffix)) => Ok(Component::Glob {
            prefix: literal_ok(prefix)?,
            suffix: literal_ok(suffix)?,
        }),
    }
}

/// The components of a cgroup path (`/` is the root, with none).
pub fn components(path: &[u8]) -> Vec<&[u8]> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect()
}

/// As written in a policy.
impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.components.is_empty() && !self.subtree {
            return f.write_str("/");
        }
        for c in &self.components {
            f.write_str("/")?;
            match c {
                Component::Literal(l) => f.write_str(&String::from_utf8_lossy(l))?,
                Component::Glob { prefix, suffix } => write!(
                    f,
                    "{}*{}",
                    String::from_utf8_lossy(prefix),
                    String::from_utf8_lossy(suffix)
                )?,
            }
        }
        if self.subtree {
            f.write_str("/**")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Pattern {
        Pattern::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn matches(pattern: &str, path: &str) -> bool {
        p(pattern).matches(&components(path.as_bytes()))
    }

    #[test]
    fn literals_match_exactly_one_cgroup() {
        assert!(matches(
            "/system.slice/sshd.service",
            "/system.slice/sshd.service"
        ));
        assert!(!matches(
            "/system.slice/sshd.service",
            "/system.slice/sshd.service/x"
        ));
        assert!(!matches("/system.slice/sshd.service", "/system.slice"));
        assert!(!matches(
            "/system.slice/sshd.service",
            "/system.slice/sshd.servic"
        ));
        assert!(!matches(
            "/system.slice/sshd.service",
            "/user.slice/sshd.service"
        ));
    }

    #[test]
    fn a_glob_matches_within_one_component() {
        let docker = "/system.slice/docker-*.scope";
        assert!(matches(docker, "/system.slice/docker-abc.scope"));
        assert!(matches(docker, "/system.slice/docker-.scope"));
        assert!(!matches(docker, "/system.slice/docker-a/b.scope"));
        assert!(!matches(docker, "/system.slice/docker-abc.scope/init"));
        assert!(!matches(docker, "/system.slice/containerd.scope"));
        // Prefix and suffix may not overlap: "ab*ba" needs four bytes.
        assert!(!matches("/ab*ba", "/aba"));
        assert!(matches("/ab*ba", "/abba"));
        assert!(matches("/*", "/anything"));
        assert!(!matches("/*", "/"));
    }

    #[test]
    fn a_final_double_star_is_the_cgroup_and_everything_below() {
        let pods = "/kubepods.slice/**";
        assert!(matches(pods, "/kubepods.slice"));
        assert!(matches(pods, "/kubepods.slice/a/b/c"));
        assert!(!matches(pods, "/kubepods"));
        assert!(!matches(pods, "/"));
        assert!(matches("/**", "/"));
        assert!(matches("/**", "/a/b"));
        assert!(matches("/", "/"));
        assert!(!matches("/", "/a"));
    }

    #[test]
    fn malformed_patterns_say_what_is_wrong() {
        let err = |text: &str| Pattern::parse(text).expect_err(text);
        assert!(err("system.slice").contains("does not start with /"));
        assert!(err("/a//b").contains("empty component"));
        assert!(err("/a/").contains("empty component"));
        assert!(err("/a/**/b").contains("** may only be the last component"));
        assert!(err("/a**").contains("** stands alone"));
        assert!(err("/a*b*c").contains("more than one *"));
        assert!(err("/a/../b").contains("which no cgroup is named"));
        assert!(err("/a\nb").contains("newline"));
        let long = format!("/{}", "x".repeat(MAX_LITERAL + 1));
        assert!(err(&long).contains("more than 128"));
        let deep = "/a".repeat(MAX_PATTERN_DEPTH as usize + 1);
        assert_eq!(
            err(&deep),
            format!(
                "{deep:?} has 17 components, more than the 16 a pattern may have (a final ** does not count)"
            )
        );
        // A final ** does not count.
        p(&format!("{}/**", "/a".repeat(MAX_PATTERN_DEPTH as usize)));
    }

    #[test]
    fn display_writes_what_was_parsed() {
        for text in [
            "/",
            "/**",
            "/a/b*c/**",
            "/*",
            "/system.slice/docker-*.scope",
        ] {
            assert_eq!(p(text).to_string(), text);
        }
    }
}
