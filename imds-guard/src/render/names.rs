//! Writing user and group names so that each loader reads back the same
//! name, and refusing where it cannot.
//!
//! The policy accepts any name NSS could hold (no whitespace, ':' or NUL),
//! so `$(reboot)` and `a"b` are valid policy names. The usual names
//! (`[A-Za-z_][A-Za-z0-9._-]*`, what `useradd` accepts by default) are
//! written bare everywhere; anything else is quoted where the syntax has
//! quotes, with a warning, and left out where it has none. The shell output
//! in particular must never let a name run as a command.

use std::borrow::Cow;

/// The grammar a name ends up in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Syntax {
    /// One argument of a POSIX shell command (iptables commands).
    Shell,
    /// One argument on an `iptables-restore` line, which splits on blanks
    /// and groups with double quotes.
    Restore,
    /// A string in nft's language. The nftables module shell-quotes whole
    /// nft arguments for the commands format, so this is all a name needs.
    Nft,
    /// A string in pf.conf.
    Pf,
    /// A word of an ipfw rule, which has no quoting at all.
    Ipfw,
}

/// Whether `name` is an everyday user or group name, safe bare in every
/// syntax: `[A-Za-z_][A-Za-z0-9._-]*`. A leading digit is excluded because
/// nft, PF and IPFW would read it as (the start of) a number.
pub(super) fn is_plain(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `name` written for `syntax`, or `None` when the syntax cannot carry it.
pub(super) fn write(name: &str, syntax: Syntax) -> Option<String> {
    if is_plain(name) {
        return Some(name.to_owned());
    }
    // Every syntax but the shell's is line-based.
    if syntax != Syntax::Shell && name.chars().any(char::is_control) {
        return None;
    }
    match syntax {
        Syntax::Shell => Some(shell_word(name).into_owned()),
        // iptables-restore and pfctl treat a backslash as an escape in
        // quotes, nft has no escape at all: a quote inside cannot be written.
        Syntax::Restore | Syntax::Pf if name.contains(['"', '\\']) => None,
        Syntax::Nft if name.contains('"') => None,
        Syntax::Restore | Syntax::Nft | Syntax::Pf => Some(format!("\"{name}\"")),
        Syntax::Ipfw => ipfw_word(name),
    }
}

/// IPFW splits a rule line on blanks, cuts it at '#', joins words around
/// ',' (sbin/ipfw/main.c), and reads a `uid`/`gid` argument that
/// `strtoul(.., 0)` parses whole as a number (ipfw2.c), which includes
/// `0x1f`, `017` and `-1`. Anything else reaches getpwnam(3) as written.
fn ipfw_word(name: &str) -> Option<String> {
    if name.contains(['#', ',']) {
        return None;
    }
    let unsigned = name.strip_prefix(['+', '-']).unwrap_or(name);
    let hex = unsigned
        .strip_prefix("0x")
        .or_else(|| unsigned.strip_prefix("0X"));
    let numeric = match hex {
        Some(hex) => !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()),
        None => !unsigned.is_empty() && unsigned.chars().all(|c| c.is_ascii_digit()),
    };
    (!numeric).then(|| name.to_owned())
}

/// `word` as one POSIX shell word: bare when it has only characters no
/// shell treats specially, single-quoted otherwise.
pub(super) fn shell_word(word: &str) -> Cow<'_, str> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-.,:/@%+=".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(format!("'{}'", word.replace('\'', r"'\''")))
    }
}

/// `text` with control characters replaced, so that it stays inside one
/// `#` comment line (a path may hold a newline).
pub(super) fn comment_safe(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_written_bare_everywhere() {
        for syntax in [
            Syntax::Shell,
            Syntax::Restore,
            Syntax::Nft,
            Syntax::Pf,
            Syntax::Ipfw,
        ] {
            for name in ["root", "www-data", "_apt", "systemd-network", "a.b"] {
                assert_eq!(
                    write(name, syntax).as_deref(),
                    Some(name),
                    "{name:?} in {syntax:?} should be written as is"
                );
            }
        }
    }

    #[test]
    fn shell_quoting_never_lets_a_name_run() {
        assert_eq!(
            write("$(reboot)", Syntax::Shell).as_deref(),
            Some("'$(reboot)'")
        );
        assert_eq!(
            write("it's", Syntax::Shell).as_deref(),
            Some(r"'it'\''s'"),
            "a single quote must close, escape and reopen"
        );
        assert_eq!(write("a\nb", Syntax::Shell).as_deref(), Some("'a\nb'"));
    }

    #[test]
    fn names_a_syntax_cannot_carry_are_refused() {
        assert_eq!(write("a\"b", Syntax::Restore), None);
        assert_eq!(write("a\\b", Syntax::Pf), None);
        assert_eq!(write("a\"b", Syntax::Nft), None);
        assert_eq!(write("a\u{7}b", Syntax::Pf), None, "control character");
        assert_eq!(write("a#b", Syntax::Ipfw), None, "ipfw comment marker");
        assert_eq!(write("a,b", Syntax::Ipfw), None, "ipfw word joiner");
        assert_eq!(write("0x1f", Syntax::Ipfw), None, "strtoul reads hex");
        assert_eq!(write("-1", Syntax::Ipfw), None, "strtoul reads a sign");
    }

    #[test]
    fn unusual_names_are_quoted_where_the_syntax_has_quotes() {
        assert_eq!(
            write("machine$", Syntax::Restore).as_deref(),
            Some("\"machine$\"")
        );
        assert_eq!(write("1abc", Syntax::Nft).as_deref(), Some("\"1abc\""));
        assert_eq!(write("1abc", Syntax::Pf).as_deref(), Some("\"1abc\""));
        assert_eq!(
            write("1abc", Syntax::Ipfw).as_deref(),
            Some("1abc"),
            "ipfw looks up a name that strtoul does not parse whole"
        );
    }

    #[test]
    fn comments_stay_on_one_line() {
        assert_eq!(comment_safe("/etc/a\nb.toml"), "/etc/a?b.toml");
    }
}
