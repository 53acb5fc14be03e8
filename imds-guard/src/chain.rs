//! An error with its causes on one line (`what: why: root cause`), the way
//! `anyhow`'s `{:#}` prints, for the library modules that log or wrap an
//! error without depending on `anyhow`. A leaf: it imports nothing of ours.

use std::{error::Error, fmt};

/// Displays an error followed by each of its sources, `": "`-separated.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the door")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn prints_every_cause() {
        let e = Outer(std::io::Error::other("it is locked"));
        assert_eq!(Chain(&e).to_string(), "cannot open the door: it is locked");
    }
}
