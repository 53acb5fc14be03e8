//! The text format's fields with every control character escaped, in the
//! message and in every field: a cgroup path a user named, a process name,
//! a unit or interface name can hold a CR (which rewrites the line on a
//! terminal), a newline (a forged record) or a terminal escape.
//! tracing-subscriber's own sanitising covers the message only, and not
//! CR or LF. JSON escapes them itself; the journal keeps bytes as they are.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::{
    field::{RecordFields, VisitOutput as _},
    fmt::{
        FormatFields,
        format::{DefaultVisitor, Writer},
    },
};

use crate::text::printable;

/// Formats fields as tracing-subscriber's default does (`name=value`,
/// strings quoted, the message bare), each value escaped first.
pub(super) struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Escaping(DefaultVisitor::new(writer, true));
        fields.record(&mut visitor);
        visitor.0.finish()
    }
}

/// The default visitor, handed each value as escaped text.
struct Escaping<'w>(DefaultVisitor<'w>);

impl Visit for Escaping<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // As the default visitor does: the message bare, others quoted.
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = printable(&format!("{value:?}"));
        self.0.record_debug(field, &format_args!("{text}"));
    }
}

#[cfg(test)]
mod tests {
    use super::{super::captured::Buffer, *};

    /// The text the format writes for `record`, as the agent sets it up.
    fn written(record: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(false)
            .with_target(false)
            .without_time()
            .fmt_fields(EscapedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, record);
        buffer.text()
    }

    #[test]
    fn control_bytes_are_escaped_in_every_field_and_the_message() {
        // A cgroup a user named with a CR and an escape, a process name
        // with a newline, a unit with a tab, as each kind of field carries
        // them: the message, a string, a Display value, a Debug value.
        let cgroup = "/user.slice/x\r\u{1b}[2K fake\u{7}";
        let comm = "cu\nrl";
        let unit = Some("a\tb.service");
        let out = written(|| {
            tracing::warn!(
                event = "deny",
                cgroup = cgroup,
                comm = %comm,
                unit = ?unit,
                uid = 1000u32,
                "denied connection in cgroup {cgroup} by pid 7 ({comm})"
            );
        });
        assert_eq!(
            out.matches('\n').count(),
            1,
            "one line, ending the record: {out:?}"
        );
        assert!(out.ends_with('\n'), "{out:?}");
        let body = &out[..out.len() - 1];
        assert!(!body.chars().any(char::is_control), "{out:?}");
        assert!(
            body.contains(
                r#"denied connection in cgroup /user.slice/x\r\u{1b}[2K fake\u{7} by pid 7 (cu\nrl)"#
            ),
            "{out:?}"
        );
        assert!(
            body.contains(r#"cgroup="/user.slice/x\r\u{1b}[2K fake\u{7}""#),
            "{out:?}"
        );
        assert!(body.contains(r#"comm=cu\nrl"#), "{out:?}");
        assert!(body.contains(r#"unit=Some("a\tb.service")"#), "{out:?}");
        assert!(body.contains("event=\"deny\" "), "{out:?}");
        assert!(body.contains("uid=1000"), "{out:?}");
    }

    #[test]
    fn text_without_control_bytes_is_written_as_the_default_format_writes_it() {
        let ours = written(|| tracing::info!(ready = true, mode = "enforce", "guard attached"));
        let buffer = Buffer::default();
        let default = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(false)
            .with_target(false)
            .without_time()
            .finish();
        tracing::subscriber::with_default(default, || {
            tracing::info!(ready = true, mode = "enforce", "guard attached");
        });
        assert_eq!(ours, buffer.text());
    }
}
