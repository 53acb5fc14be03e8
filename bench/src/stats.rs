//! Medians, spreads and paired ratios, and how they are printed.

use std::fmt::Write as _;

use anyhow::ensure;

use super::{job::Tally, quiet};

/// The median of a sample and its extremes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(xs: &[f64]) -> Self {
        let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Summary {
            n,
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    /// `median [min–max]` with `f` formatting each number.
    pub fn show(&self, f: impl Fn(f64) -> String) -> String {
        if self.n == 0 {
            return "n/a".to_owned();
        }
        if self.n == 1 {
            return f(self.median);
        }
        format!("{} [{}–{}]", f(self.median), f(self.min), f(self.max))
    }
}

/// Ratios of `xs` to `base`, pairwise (the same round): drift of the
/// machine between rounds cancels.
pub fn paired(xs: &[f64], base: &[f64]) -> Summary {
    let ratios: Vec<f64> = xs.iter().zip(base).map(|(x, b)| x / b).collect();
    Summary::of(&ratios)
}

/// `12,345`.
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A ratio as a percentage with one decimal: `98.7%`.
pub fn pct(x: f64) -> String {
    if x < 0.1 {
        format!("{:.2}%", x * 100.0)
    } else {
        format!("{:.1}%", x * 100.0)
    }
}

/// Nanoseconds, with one decimal below 1,000.
pub fn ns(x: f64) -> String {
    if x < 1000.0 {
        format!("{x:.1} ns")
    } else {
        format!("{} ns", thousands(x))
    }
}

/// A difference in nanoseconds, with its sign: `+34.4 ns`, `+1,366 ns`,
/// `-2.0 ns`.
pub fn ns_diff(x: f64) -> String {
    let sign = if x < 0.0 { '-' } else { '+' };
    format!("{sign}{}", ns(x.abs()))
}

/// Milliseconds, 1 decimal below 100.
pub fn ms(x: f64) -> String {
    if x < 100.0 {
        format!("{x:.1} ms")
    } else {
        format!("{} ms", thousands(x))
    }
}

/// KiB as MiB with one decimal.
pub fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

/// Runs `cases` cases for `rounds` rounds, interleaved: round r runs every
/// case once, starting at case r (a rotation, so no case always runs right
/// after the same one), each after the [`quiet::gate`]. Returns
/// `[case][round]`.
pub fn interleave<T>(
    what: &str,
    cases: usize,
    rounds: usize,
    mut run: impl FnMut(usize) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<Vec<T>>> {
    let mut out: Vec<Vec<T>> = (0..cases).map(|_| Vec::with_capacity(rounds)).collect();
    for round in 0..rounds {
        eprint!("\r{what}: round {}/{rounds}   ", round + 1);
        for j in 0..cases {
            quiet::gate()?;
            let case = (round + j) % cases;
            out[case].push(run(case)?);
        }
    }
    eprintln!();
    Ok(out)
}

/// What a timed loop must have seen, or its rate means nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Connected,
    Denied,
}

/// Fails unless every connect of `t` ended as `expect` says.
pub fn check(label: &str, t: &Tally, expect: Expect) -> anyhow::Result<()> {
    let good = match expect {
        Expect::Connected => t.ok,
        Expect::Denied => t.eperm,
    };
    ensure!(
        t.connects > 0 && good == t.connects,
        "{label}: expected every connect {expect:?}, got {t:?}"
    );
    Ok(())
}

/// Rates of a `[case][round]` table of tallies.
pub fn rates(t: &[Vec<Tally>]) -> Vec<Vec<f64>> {
    t.iter()
        .map(|c| c.iter().map(Tally::rate).collect())
        .collect()
}

/// A markdown table.
pub struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(head: &[&str]) -> Self {
        Table {
            head: head.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Markdown, columns padded so it also reads as plain text.
    pub fn render(&self) -> String {
        let cols = self.head.len();
        let mut width = vec![3; cols];
        for r in std::iter::once(&self.head).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut s = String::new();
        let line = |s: &mut String, cells: &[String]| {
            s.push('|');
            for (i, w) in width.iter().enumerate() {
                let c = cells.get(i).map_or("", String::as_str);
                let pad = w - c.chars().count();
                let _ = write!(s, " {c}{} |", " ".repeat(pad));
            }
            s.push('\n');
        };
        line(&mut s, &self.head);
        s.push('|');
        for w in &width {
            let _ = write!(s, "{}|", "-".repeat(w + 2));
        }
        s.push('\n');
        for r in &self.rows {
            line(&mut s, r);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.n, s.median, s.min, s.max), (4, 2.5, 1.0, 10.0));
        assert_eq!(Summary::of(&[5.0, 1.0, 3.0]).median, 3.0);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }

    #[test]
    fn differences_keep_their_sign_and_separators() {
        assert_eq!(ns_diff(34.4), "+34.4 ns");
        assert_eq!(ns_diff(1_365.7), "+1,366 ns");
        assert_eq!(ns_diff(-2.0), "-2.0 ns");
        assert_eq!(ns_diff(-1_500.0), "-1,500 ns");
    }
}
