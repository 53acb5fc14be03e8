//! The scale measurement as an SVG: connect rate as a share of no guard
//! against the number of allowed uids, both axes logarithmic, one panel for
//! the hot path and one for the protected path; the median of the paired
//! ratios with a bar from the lowest to the highest round.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use super::{
    scale::{Cell, ScaleResult},
    setup::Kind,
    stats::Summary,
};

const SIZE: (u32, u32) = (1200, 520);

fn color(kind: Kind) -> RGBColor {
    // Okabe–Ito, readable by colour-blind readers.
    match kind {
        Kind::ImdsGuard => RGBColor(0, 114, 178),
        Kind::Iptables(super::firewall::Xt::Nft, _) => RGBColor(213, 94, 0),
        Kind::Nftables => RGBColor(0, 158, 115),
        Kind::Iptables(super::firewall::Xt::Legacy, _) => RGBColor(204, 121, 167),
        Kind::None => RGBColor(0, 0, 0),
        Kind::Floor => RGBColor(128, 128, 128),
    }
}

pub fn draw(sc: &ScaleResult, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root
        .titled(
            &format!(
                "imds-guard-bench: connect()+close() rate vs allowed uids, % of no guard \
                 (median of {} rounds; bars: min to max)",
                sc.rounds
            ),
            ("sans-serif", 18),
        )
        .map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    // One y range for both panels, so they compare at a glance.
    let lowest = sc
        .cells
        .iter()
        .flat_map(|c| [c.hot_ratio.min, c.protected_ratio.min])
        .filter(|x| *x > 0.0)
        .fold(1.0f64, f64::min);
    let y_lo = 10f64.powf((lowest * 100.0 * 0.7).log10().floor()).min(50.0);
    let y = (y_lo, 200.0);
    panel(
        &left,
        sc,
        "hot path: uid 65534 to 127.0.0.1 (not protected)",
        y,
        |c| c.hot_ratio,
    )?;
    panel(
        &right,
        sc,
        "protected path: last-listed allowed uid to 169.254.169.254",
        y,
        |c| c.protected_ratio,
    )?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    sc: &ScaleResult,
    title: &str,
    (y_lo, y_hi): (f64, f64),
    pick: impl Fn(&Cell) -> Summary,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    let x_hi = f64::from(sc.sizes.last().copied().unwrap_or(1)) * 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0.7f64..x_hi).log_scale(), (y_lo..y_hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("allowed uids in the policy")
        .y_desc("connect rate, % of no guard")
        .x_label_formatter(&|x| super::stats::thousands(*x))
        .y_label_formatter(&|y| format!("{y}%"))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            [(0.7, 100.0), (x_hi, 100.0)],
            BLACK.mix(0.4),
        ))
        .map_err(err)?;
    for &kind in &sc.kinds {
        let c = color(kind);
        let points: Vec<(f64, Summary)> = sc
            .sizes
            .iter()
            .filter_map(|&n| sc.cell(n, kind).map(|cell| (f64::from(n), pick(cell))))
            .filter(|(_, s)| s.n > 0 && s.median > 0.0)
            .collect();
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|(x, s)| (*x, s.median * 100.0)),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(kind.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|(x, s)| Circle::new((*x, s.median * 100.0), 4, c.filled())),
            )
            .map_err(err)?;
        chart
            .draw_series(points.iter().map(|(x, s)| {
                PathElement::new(
                    vec![(*x, s.min.max(y_lo / 100.0) * 100.0), (*x, s.max * 100.0)],
                    c.stroke_width(1),
                )
            }))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(err)?;
    Ok(())
}
