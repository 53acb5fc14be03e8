//! Markdown as manual page sections: the pages' own sources in `docs/man/`
//! and the policy reference in docs/policy.md. Only the markdown those
//! documents use is understood: headings, paragraphs, bullets, fenced code
//! and tables, with `code`, **bold** and links inline.

use clap_mangen::roff::{Inline, Roff, bold, roman};

/// The sections of `md`, `(title, text)` in order: each `# TITLE` line
/// (outside fenced code) starts one, which runs up to the next. Text
/// before the first title belongs to none and is left out.
pub fn sections(md: &str) -> Vec<(&str, &str)> {
    let mut found: Vec<(&str, usize)> = Vec::new();
    let mut in_code = false;
    let mut offset = 0;
    let mut ends = Vec::new();
    for line in md.split_inclusive('\n') {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && let Some(title) = line.strip_prefix("# ") {
            ends.push(offset);
            found.push((title.trim(), offset + line.len()));
        }
        offset += line.len();
    }
    ends.push(md.len());
    found
        .iter()
        .zip(ends.iter().skip(1))
        .map(|((title, start), end)| (*title, &md[*start..*end]))
        .collect()
}

/// Appends `md` to `r`: `##` and `###` headings become `.SS` (the page's
/// own `.SH` is given by the caller), the rest as described above.
pub fn to_roff(md: &str, r: &mut Roff) {
    let mut paragraph: Vec<&str> = Vec::new();
    let mut lines = md.lines().peekable();
    let flush = |paragraph: &mut Vec<&str>, r: &mut Roff| {
        if !paragraph.is_empty() {
            r.control("PP", []);
            r.text(inline(&paragraph.join(" ")));
            paragraph.clear();
        }
    };
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(fence) = trimmed.strip_prefix("```") {
            let _ = fence;
            flush(&mut paragraph, r);
            r.control("PP", []).control("RS", ["4"]).control("nf", []);
            for code in lines.by_ref() {
                if code.trim_start().starts_with("```") {
                    break;
                }
                r.text([roman(unescape(code))]);
            }
            r.control("fi", []).control("RE", []);
        } else if let Some(code) = line.strip_prefix("    ").filter(|_| paragraph.is_empty()) {
            // An indented block: one code line after another.
            r.control("PP", []).control("RS", ["4"]).control("nf", []);
            r.text([roman(unescape(code))]);
            while let Some(next) = lines.peek().and_then(|l| l.strip_prefix("    ")) {
                r.text([roman(unescape(next))]);
                lines.next();
            }
            r.control("fi", []).control("RE", []);
        } else if let Some(title) = line.strip_prefix('#').map(|l| l.trim_start_matches('#')) {
            flush(&mut paragraph, r);
            r.control("SS", [plain(title.trim()).as_str()]);
        } else if trimmed.starts_with('|') {
            flush(&mut paragraph, r);
            // The header row names the columns: each body row becomes a
            // tagged paragraph, its first cell the tag.
            let mut first = true;
            let mut row = Some(line);
            while let Some(current) = row {
                let cells = cells(current);
                let separator = cells.iter().all(|c| c.chars().all(|ch| "-: ".contains(ch)));
                if !first && !separator {
                    r.control("TP", []);
                    r.text(bold_inline(cells.first().copied().unwrap_or_default()));
                    r.text(inline(&cells[1..].join(": ")));
                }
                first = false;
                row = lines.next_if(|l| l.trim_start().starts_with('|'));
            }
        } else if let Some(item) = trimmed.strip_prefix("- ") {
            flush(&mut paragraph, r);
            let mut text = vec![item];
            while let Some(next) =
                lines.next_if(|l| l.starts_with("  ") && !l.trim_start().starts_with("- "))
            {
                text.push(next.trim());
            }
            r.control("IP", ["\\(bu", "2"]);
            r.text(inline(&text.join(" ")));
        } else if trimmed.is_empty() {
            flush(&mut paragraph, r);
        } else {
            paragraph.push(trimmed);
        }
    }
    flush(&mut paragraph, r);
}

/// The cells of a table row, trimmed, without the outer pipes; `\|` is a
/// pipe inside a cell.
fn cells(row: &str) -> Vec<&str> {
    let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
    let mut cells = Vec::new();
    let mut start = 0;
    let bytes = inner.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'|' && (i == 0 || bytes[i - 1] != b'\\') {
            cells.push(inner[start..i].trim());
            start = i + 1;
        }
    }
    cells.push(inner[start..].trim());
    cells
}

/// Markdown's inline marks as roff: `code` and **bold** in bold, links
/// as their text followed by the address, `\|` as a pipe.
fn inline(text: &str) -> Vec<Inline> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let next = rest.find(['`', '*', '[']).unwrap_or(rest.len());
        if next > 0 {
            out.push(roman(unescape(&rest[..next])));
            rest = &rest[next..];
            continue;
        }
        if let Some(body) = rest.strip_prefix('`')
            && let Some(end) = body.find('`')
        {
            out.push(bold(unescape(&body[..end])));
            rest = &body[end + 1..];
        } else if let Some(body) = rest.strip_prefix("**")
            && let Some(end) = body.find("**")
        {
            out.push(bold(unescape(&body[..end])));
            rest = &body[end + 2..];
        } else if let Some(body) = rest.strip_prefix('[')
            && let Some(close) = body.find("](")
            && let Some(end) = body[close..].find(')')
        {
            // A page cannot follow a link to another document of the
            // source tree: it keeps the link's text and drops the path.
            let target = &body[close + 2..close + end];
            let text = unescape(&body[..close]);
            out.push(roman(if target.contains("://") {
                format!("{text} ({target})")
            } else {
                text
            }));
            rest = &body[close + end + 1..];
        } else {
            out.push(roman(&rest[..1]));
            rest = &rest[1..];
        }
    }
    out
}

fn bold_inline(text: &str) -> Vec<Inline> {
    vec![bold(plain(text))]
}

/// `text` without inline marks.
fn plain(text: &str) -> String {
    unescape(text).replace(['`', '*'], "")
}

/// `text` with `\|` as a pipe, in ASCII: groff without preconv reads
/// nothing else, so the few other characters the documents use are spelled
/// out and any other is a `?`.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.replace("\\|", "|").chars() {
        match c {
            c if c.is_ascii() => out.push(c),
            '…' => out.push_str("..."),
            '→' => out.push_str("->"),
            'µ' => out.push('u'),
            '—' | '–' => out.push_str("--"),
            '’' | '‘' => out.push('\''),
            '“' | '”' => out.push('"'),
            _ => out.push('?'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roff(md: &str) -> String {
        let mut r = Roff::new();
        to_roff(md, &mut r);
        r.to_roff()
    }

    #[test]
    fn a_section_runs_from_its_title_to_the_next() {
        let md = "lead\n# A\n\ntext\n\n## A.1\n\nmore\n```\n# not a title\n```\n# B\n\nb\n";
        let found = sections(md);
        let titles: Vec<&str> = found.iter().map(|(t, _)| *t).collect();
        assert_eq!(titles, ["A", "B"]);
        assert!(found[0].1.contains("## A.1") && found[0].1.contains("# not a title"));
        assert!(!found[0].1.contains("\nb\n") && !found[0].1.contains("lead"));
        assert_eq!(found[1].1, "\nb\n");
        assert!(sections("no title\n").is_empty());
    }

    #[test]
    fn markdown_becomes_roff() {
        let text = roff(
            "Run `imds-guard run` as **root**, see [the guide](https://x.example).\n\n\
             - one\n  two\n\n| key | meaning |\n|---|---|\n| `mode` | a \\| b |\n\n\
             ```toml\n[allow]\n.dot\n```\n",
        );
        assert!(text.contains("\\fBimds\\-guard run\\fR"), "{text}");
        assert!(text.contains("the guide (https://x.example)"), "{text}");
        let local = roff("See [the policy](policy.md#keys).\n");
        assert!(local.contains("See the policy."), "{local}");
        assert!(text.contains(".IP \\(bu 2\none two"), "{text}");
        assert!(text.contains(".TP\n\\fBmode\\fR\na | b"), "{text}");
        assert!(text.contains(".nf\n[allow]\n\\&.dot\n.fi"), "{text}");
        assert!(!text.contains("key"), "the header row is not a row: {text}");
    }
}
