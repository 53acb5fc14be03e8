//! Text that came from elsewhere made safe to log: a process name set with
//! `prctl(PR_SET_NAME)`, an interface or cgroup name, a user name from a
//! directory can hold a newline (starting a forged log line), a carriage
//! return or a terminal escape. Control characters are escaped as Rust
//! writes them (`\n`, `\u{1b}`), everything else is kept. A leaf: it
//! imports nothing of ours.

/// `s` with every control character escaped.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_cannot_start_a_line_or_a_terminal_sequence() {
        assert_eq!(printable("curl"), "curl");
        assert_eq!(printable("a\nb\rc"), "a\\nb\\rc");
        assert_eq!(printable("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(printable("tab\there"), "tab\\there");
        assert_eq!(printable("é ü"), "é ü");
    }
}
