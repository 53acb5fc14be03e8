//! `suggest --interactive`: each proposal in turn, as `aa-logprof` asks,
//! with what it saw and what its form admits; the operator accepts it,
//! refuses it, or widens (and narrows back) its form. Answers are lines:
//! `a`, `r`, `w`, `n`, `q` (refuse the rest), or the word. An input that
//! ends before every proposal is answered is an error: no policy is
//! better than one made of guesses.

use std::io::{BufRead, Write};

use super::{LearnError, suggest::Proposal};

/// What the operator chose for each proposal: the form's index, or
/// `None` when refused.
pub fn ask(
    proposals: &[Proposal],
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<Vec<Option<usize>>, LearnError> {
    let mut chosen = Vec::with_capacity(proposals.len());
    let mut quit = false;
    for (i, p) in proposals.iter().enumerate() {
        if quit {
            chosen.push(None);
            continue;
        }
        let (answer, stop) = ask_one(p, i, proposals.len(), input, out)?;
        chosen.push(answer);
        quit = stop;
    }
    Ok(chosen)
}

/// One proposal: its answer, and whether to refuse the rest.
fn ask_one(
    p: &Proposal,
    i: usize,
    of: usize,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<(Option<usize>, bool), LearnError> {
    let mut form = 0;
    let prompt = |out: &mut dyn Write, form: usize| -> std::io::Result<()> {
        let f = &p.forms[form];
        let lines: Vec<String> = f.lines.iter().map(ToString::to_string).collect();
        writeln!(out, "\n[{}/{of}] {}: {}", i + 1, p.who, p.seen.summary())?;
        writeln!(out, "  entry:  {}", lines.join("; "))?;
        writeln!(out, "  admits: {}", f.admits)?;
        let mut choices = vec!["(a)ccept", "(r)efuse"];
        if form + 1 < p.forms.len() {
            choices.push("(w)iden");
        }
        if form > 0 {
            choices.push("(n)arrow");
        }
        choices.push("(q)uit, refusing the rest");
        write!(out, "  {}? ", choices.join(", "))?;
        out.flush()
    };
    if p.forms.is_empty() {
        return Ok((None, false));
    }
    loop {
        prompt(out, form).map_err(LearnError::Prompt)?;
        let mut line = String::new();
        if input.read_line(&mut line).map_err(LearnError::Input)? == 0 {
            return Err(LearnError::Unanswered(i + 1));
        }
        match line.trim().to_ascii_lowercase().as_str() {
            "a" | "accept" => return Ok((Some(form), false)),
            "r" | "refuse" => return Ok((None, false)),
            "q" | "quit" => return Ok((None, true)),
            "w" | "widen" if form + 1 < p.forms.len() => form += 1,
            "n" | "narrow" if form > 0 => form -= 1,
            other => writeln!(out, "  {other:?} is not one of the answers")
                .map_err(LearnError::Prompt)?,
        }
    }
}
