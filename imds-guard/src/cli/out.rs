//! Printing a command's answer on stdout without panicking on a closed
//! pipe: `imds-guard status --json | head -c 10` closes stdout before the
//! command is done, and `println!` panics then (exit 101). A closed pipe
//! becomes [`CliError::Closed`], which ends the command quietly with exit
//! 0, as ripgrep treats `BrokenPipe`: the reader had what it wanted.

use std::{
    fmt,
    io::{self, Write as _},
};

use super::CliError;

/// `println!`, returning [`CliError::Closed`] when the reader went away.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out::write(::std::format_args!("{}\n", ::std::format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// `print!`, likewise.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::out::write(::std::format_args!($($arg)*))
    };
}
pub(crate) use out;

/// Writes `args` to stdout and flushes it.
pub fn write(args: fmt::Arguments<'_>) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_fmt(args)
        .and_then(|()| stdout.flush())
        .map_err(closed_or_failed)
}

/// A closed pipe is the end of the command; anything else is an error.
fn closed_or_failed(e: io::Error) -> CliError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        CliError::Closed
    } else {
        CliError::Runtime(Box::new(io::Error::new(
            e.kind(),
            format!("cannot write to stdout: {e}"),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_ends_quietly_and_other_errors_do_not() {
        let closed = closed_or_failed(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(matches!(closed, CliError::Closed));
        assert_eq!(closed.exit_code(), std::process::ExitCode::SUCCESS);
        let full = closed_or_failed(io::Error::from(io::ErrorKind::StorageFull));
        assert!(matches!(full, CliError::Runtime(_)), "{full}");
    }
}
