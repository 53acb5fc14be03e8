//! How a goal judges one figure of a run: a [`Check`] is a figure with
//! its spread against a [`Bound`] (or a condition that holds or not), and
//! says in one line how far off a figure is.

use crate::stats::{Summary, mib, ms, ns, pct};

/// How a figure is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Share,
    Ns,
    Ms,
    Kib,
    /// A plain number with two decimals (the growth exponent).
    Number,
}

impl Unit {
    pub fn show(self, x: f64) -> String {
        match self {
            Self::Share => pct(x),
            Self::Ns => ns(x),
            Self::Ms => ms(x),
            Self::Kib => mib(x),
            Self::Number => format!("{x:.2}"),
        }
    }
}

/// What a goal asks of one figure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    /// The median at most this.
    AtMost(f64),
    /// The median at least this.
    AtLeast(f64),
    /// Every sample at most this: the worst counts.
    WorstAtMost(f64),
    /// The median above another configuration's, measured in the same
    /// rounds.
    Above {
        whose: &'static str,
        figure: Summary,
    },
    /// The median at most `by` over another configuration's (the floor's),
    /// measured in the same rounds.
    Over {
        whose: &'static str,
        figure: Summary,
        by: f64,
    },
    /// No bound: a figure a goal reports without a number to meet (the
    /// issue gives none); never met or missed.
    Reported,
}

/// One thing a goal asks of the run.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// A figure of the run against its bound.
    Figure {
        what: &'static str,
        value: Summary,
        unit: Unit,
        bound: Bound,
    },
    /// A condition of the run; `None` when the run cannot say.
    Holds {
        what: &'static str,
        holds: Option<bool>,
    },
}

impl Check {
    /// Whether the run meets it; `None` without the figures to judge.
    pub fn met(&self) -> Option<bool> {
        match *self {
            Self::Holds { holds, .. } => holds,
            Self::Figure { value, bound, .. } => {
                if value.n == 0 {
                    return None;
                }
                match bound {
                    Bound::AtMost(b) => Some(value.median <= b),
                    Bound::AtLeast(b) => Some(value.median >= b),
                    Bound::WorstAtMost(b) => Some(value.max <= b),
                    Bound::Above { figure, .. } => {
                        (figure.n > 0).then_some(value.median > figure.median)
                    }
                    Bound::Over { figure, by, .. } => {
                        (figure.n > 0).then_some(value.median - figure.median <= by)
                    }
                    Bound::Reported => None,
                }
            }
        }
    }

    /// The figure with its spread against the bound, and how far off:
    /// `connect4 968.0 ns [677.5 ns–1,486 ns] against ≤ 500.0 ns: median
    /// 1.94× the bound, every sample above it`.
    pub fn line(&self) -> String {
        let (what, value, unit, bound) = match *self {
            Self::Holds { what, holds } => {
                let answer = match holds {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "unknown",
                };
                return format!("{what}: {answer}");
            }
            Self::Figure {
                what,
                value,
                unit,
                bound,
            } => (what, value, unit, bound),
        };
        let shown = value.show(|x| unit.show(x));
        let spread = |beyond: bool, side: &str| {
            if value.n < 2 {
                String::new()
            } else if beyond {
                format!(", every sample {side} it")
            } else {
                ", the bound within the spread".to_owned()
            }
        };
        match bound {
            Bound::AtMost(b) => format!(
                "{what} {shown} against ≤ {}: median {:.2}× the bound{}",
                unit.show(b),
                value.median / b,
                spread(value.min > b, "above")
            ),
            Bound::AtLeast(b) => format!(
                "{what} {shown} against ≥ {}: median {:.2}× the bound{}",
                unit.show(b),
                value.median / b,
                spread(value.max < b, "below")
            ),
            Bound::WorstAtMost(b) => format!(
                "{what} {shown} against each ≤ {}: the worst {:.2}× the bound",
                unit.show(b),
                value.max / b
            ),
            Bound::Over { whose, figure, by } => {
                let over = value.median - figure.median;
                format!(
                    "{what} {shown} against {whose} {} + {}: {} over it, {:.2}× the margin",
                    figure.show(|x| unit.show(x)),
                    unit.show(by),
                    unit.show(over),
                    over / by
                )
            }
            Bound::Reported => format!("{what} {shown}: reported, no bound"),
            Bound::Above { whose, figure } => format!(
                "{what} {shown} against {whose} {}: {}",
                figure.show(|x| unit.show(x)),
                if value.max < figure.min {
                    "below its whole spread"
                } else {
                    "the spreads overlap"
                }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_judge_the_median_or_the_worst_and_nothing_without_samples() {
        let figure = |value, bound| Check::Figure {
            what: "x",
            value,
            unit: Unit::Ns,
            bound,
        };
        let wide = Summary {
            n: 3,
            median: 500.0,
            min: 100.0,
            max: 900.0,
        };
        assert_eq!(figure(wide, Bound::AtMost(500.0)).met(), Some(true));
        assert_eq!(figure(wide, Bound::WorstAtMost(500.0)).met(), Some(false));
        assert_eq!(figure(wide, Bound::AtLeast(501.0)).met(), Some(false));
        assert_eq!(figure(Summary::default(), Bound::AtMost(500.0)).met(), None);
        let floor = Summary {
            n: 3,
            median: 20.0,
            min: 19.0,
            max: 21.0,
        };
        let over = |by| Bound::Over {
            whose: "the empty program's",
            figure: floor,
            by,
        };
        assert_eq!(figure(wide, over(480.0)).met(), Some(true));
        assert_eq!(figure(wide, over(479.0)).met(), Some(false));
        let unmeasured = Bound::Over {
            whose: "the empty program's",
            figure: Summary::default(),
            by: 5.0,
        };
        assert_eq!(figure(wide, unmeasured).met(), None);
        assert_eq!(figure(wide, Bound::Reported).met(), None);
        assert_eq!(
            figure(wide, over(5.0)).line(),
            "x 500.0 ns [100.0 ns–900.0 ns] against the empty program's 20.0 ns [19.0 ns–21.0 \
             ns] + 5.0 ns: 480.0 ns over it, 96.00× the margin"
        );
        assert_eq!(
            figure(wide, Bound::AtMost(400.0)).line(),
            "x 500.0 ns [100.0 ns–900.0 ns] against ≤ 400.0 ns: median 1.25× the bound, the \
             bound within the spread"
        );
    }
}
