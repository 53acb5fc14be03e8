//! What the maintainer scripts of both packages share: the one line that
//! says what is in force after an install or an upgrade
//! (`scripts/state.sh`), put where a script says `#IMDS_GUARD_STATE#`, as
//! debhelper fills `#DEBHELPER#`.

/// Where a script wants the state snippet.
const MARK: &str = "#IMDS_GUARD_STATE#";
/// The snippet: the shell functions `imds_guard_state` and
/// `imds_guard_forbidden`.
const STATE: &str = include_str!("scripts/state.sh");

/// `script` with the snippet where it says [`MARK`].
pub fn filled(script: &str) -> String {
    script.replace(MARK, STATE.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_that_says_what_is_in_force_has_the_snippet() {
        let scripts: Vec<(&str, String)> = super::super::deb::scripts()
            .into_iter()
            .chain(super::super::rpm::scriptlets())
            .collect();
        for (name, text) in &scripts {
            assert!(!text.contains(MARK), "{name} keeps the mark");
            assert_eq!(
                text.contains("imds_guard_state\n"),
                text.contains("imds_guard_state() {"),
                "{name} calls the snippet without it, or has it for nothing"
            );
        }
        let with = scripts
            .iter()
            .filter(|(_, text)| text.contains("imds_guard_state() {"))
            .count();
        assert_eq!(with, 3, "postinst, %post and %postun say what is in force");
    }
}
