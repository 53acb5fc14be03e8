//! Why a policy was refused, in a form a person can act on: every problem
//! of the file at once, each as `FILE:LINE:COL: what is wrong`, so one edit
//! session can fix them all rather than one per restart of the agent.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use super::Location;

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read at all.
    #[error("{}: cannot read the policy file", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but says something wrong; prints every diagnostic,
    /// one per line.
    #[error("{}", Listing::new(.path, .diagnostics))]
    Invalid {
        path: PathBuf,
        /// Never empty, in file order.
        diagnostics: Vec<Diagnostic>,
    },
}

impl PolicyError {
    /// An [`PolicyError::Invalid`] with `diagnostics` put in file order.
    pub(super) fn invalid(path: &Path, mut diagnostics: Vec<Diagnostic>) -> Self {
        // Stable, so two problems at one position keep the order in which
        // they were found (the more basic one first).
        diagnostics.sort_by_key(|d| d.at);
        Self::Invalid {
            path: path.to_owned(),
            diagnostics,
        }
    }

    /// A policy refused for its `warnings` (`validate --strict`), each
    /// said as such.
    pub fn strict(path: &Path, warnings: &[Diagnostic]) -> Self {
        let refused = warnings
            .iter()
            .map(|w| Diagnostic {
                at: w.at,
                message: format!("refused by --strict: {}", w.message),
            })
            .collect();
        Self::invalid(path, refused)
    }

    /// The problems found, in file order (empty for [`PolicyError::Read`]).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            Self::Read { .. } => &[],
            Self::Invalid { diagnostics, .. } => diagnostics,
        }
    }
}

/// One problem, at the position of the key or value that causes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub at: Location,
    /// Lowercase, names the offending value and says what is expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Displays diagnostics as `FILE:LINE:COL: message` lines, the form editors
/// and `grep -n` users can jump to.
struct Listing<'a> {
    path: &'a Path,
    diagnostics: &'a [Diagnostic],
}

impl<'a> Listing<'a> {
    fn new(path: &'a Path, diagnostics: &'a [Diagnostic]) -> Self {
        Self { path, diagnostics }
    }
}

impl fmt::Display for Listing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}:{diagnostic}", self.path.display())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn at(line: u32, col: u32, message: &str) -> Diagnostic {
        Diagnostic {
            at: Location { line, col },
            message: message.to_owned(),
        }
    }

    #[test]
    fn invalid_prints_every_diagnostic_in_file_order() {
        let error = PolicyError::invalid(
            Path::new("/etc/imds-guard.toml"),
            vec![at(7, 3, "second"), at(2, 10, "first"), at(7, 3, "third")],
        );
        assert_eq!(
            error.to_string(),
            "/etc/imds-guard.toml:2:10: first\n\
             /etc/imds-guard.toml:7:3: second\n\
             /etc/imds-guard.toml:7:3: third"
        );
        assert_eq!(error.diagnostics().len(), 3);
    }

    #[test]
    fn read_names_the_file_and_keeps_the_cause_as_source() {
        let error = PolicyError::Read {
            path: PathBuf::from("/nonexistent.toml"),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert_eq!(
            error.to_string(),
            "/nonexistent.toml: cannot read the policy file"
        );
        let source = std::error::Error::source(&error).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("entity not found"));
        assert!(error.diagnostics().is_empty());
    }
}
