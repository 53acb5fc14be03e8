//! Where the generated part goes: between two marker lines of
//! docs/BENCHMARKS.md, replacing what a previous run put there and
//! nothing else. The text around the markers is a person's: how each
//! section measures, what the figures mean, what they do not say.
//!
//! Markers in the one document rather than a generated file the document
//! links to: a reader gets the explanation and the figures on one page,
//! and the run that wrote the figures is named beside them. A document
//! without its markers is refused rather than overwritten, so the
//! hand-written part is never lost to a run.

use anyhow::{bail, ensure};

/// The line before the generated part.
pub const BEGIN: &str = "<!-- imds-guard-bench: generated from here; edit around it -->";
/// The line after it.
pub const END: &str = "<!-- imds-guard-bench: generated up to here -->";

/// `doc` with everything between the markers replaced by `generated`. A
/// document that does not exist yet (`None`) becomes a title and the
/// markers.
pub fn splice(doc: Option<&str>, generated: &str) -> anyhow::Result<String> {
    let block = format!("{BEGIN}\n\n{}\n\n{END}", generated.trim());
    let Some(doc) = doc else {
        return Ok(format!("# Benchmarks\n\n{block}\n"));
    };
    for marker in [BEGIN, END] {
        ensure!(
            doc.matches(marker).count() == 1,
            "the document must hold the line `{marker}` exactly once (the generated part goes \
             between the two markers, the rest is kept as written)"
        );
    }
    let (Some(start), Some(end)) = (doc.find(BEGIN), doc.find(END)) else {
        bail!("the document lost a marker");
    };
    ensure!(start < end, "`{END}` comes before `{BEGIN}`");
    Ok(format!(
        "{}{block}{}",
        &doc[..start],
        &doc[end + END.len()..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_part_between_the_markers_changes() {
        let doc = format!("# Benchmarks\n\nWritten by hand.\n\n{BEGIN}\nold run\n{END}\n\nMore.\n");
        let new = splice(Some(&doc), "## Goals\n\n| a |\n").expect("markers present");
        assert_eq!(
            new,
            format!(
                "# Benchmarks\n\nWritten by hand.\n\n{BEGIN}\n\n## Goals\n\n| a |\n\n{END}\n\nMore.\n"
            )
        );
        // Splicing the same run again changes nothing.
        assert_eq!(splice(Some(&new), "## Goals\n\n| a |\n").ok(), Some(new));
    }

    #[test]
    fn a_document_without_its_markers_is_refused_not_overwritten() {
        assert!(splice(Some("# Benchmarks\n\nby hand\n"), "x").is_err());
        assert!(splice(Some(&format!("{BEGIN}\n")), "x").is_err());
        assert!(splice(Some(&format!("{END}\n{BEGIN}\n")), "x").is_err());
        assert!(splice(Some(&format!("{BEGIN}\n{END}\n{END}\n")), "x").is_err());
    }

    #[test]
    fn a_new_document_is_a_title_and_the_markers() {
        let doc = splice(None, "figures\n").expect("new");
        assert_eq!(
            doc,
            format!("# Benchmarks\n\n{BEGIN}\n\nfigures\n\n{END}\n")
        );
        assert!(splice(Some(&doc), "others").is_ok());
    }
}
