//! Accuracy-vs-efficiency plots (SVG, and PNG when a font is available).

use plotters::prelude::*;
use std::path::Path;

/// A named series of (x, y) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
    pub style: SeriesStyle,
}

#[derive(Clone, Copy, PartialEq)]
pub enum SeriesStyle {
    /// Small grey dots (the sampled population).
    Background,
    /// A connected line with markers (the front).
    Front,
    /// Large labelled markers (the chosen subnets).
    Picks,
    /// Unconnected markers in a second colour (the chosen subnets as measured).
    Measured,
    /// Crosses (simple baselines, measured).
    Baselines,
}

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers a TTF font for bitmap text; returns whether one was found.
fn register_font() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| match std::fs::read(FONT) {
        Ok(bytes) => {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        }
        Err(_) => false,
    })
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    series: &[Series],
    labels: &[(f64, f64, String)],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    let all: Vec<&(f64, f64)> = series.iter().flat_map(|s| s.points.iter()).collect();
    if all.is_empty() {
        anyhow::bail!("plot '{title}': no points");
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &&(x, y) in &all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let pad = |a: f64, b: f64| ((b - a).abs() * 0.05).max(1e-6);
    let (px, py) = (pad(x0, x1), pad(y0, y1));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((x0 - px)..(x1 + px), (y0 - py)..(y1 + py))
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("top-1 accuracy (%)")
        .draw()
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    for s in series {
        match s.style {
            SeriesStyle::Background => {
                chart
                    .draw_series(
                        s.points.iter().map(|&(x, y)| {
                            Circle::new((x, y), 2, RGBColor(180, 180, 180).filled())
                        }),
                    )
                    .map_err(|e| anyhow::anyhow!("plot: {e}"))?
                    .label(s.name)
                    .legend(|(x, y)| Circle::new((x, y), 3, RGBColor(180, 180, 180).filled()));
            }
            SeriesStyle::Front => {
                chart
                    .draw_series(LineSeries::new(
                        s.points.iter().copied(),
                        BLUE.stroke_width(2),
                    ))
                    .map_err(|e| anyhow::anyhow!("plot: {e}"))?
                    .label(s.name)
                    .legend(|(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], BLUE.stroke_width(2))
                    });
                chart
                    .draw_series(
                        s.points
                            .iter()
                            .map(|&(x, y)| Circle::new((x, y), 3, BLUE.filled())),
                    )
                    .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
            }
            SeriesStyle::Picks => {
                chart
                    .draw_series(
                        s.points
                            .iter()
                            .map(|&(x, y)| TriangleMarker::new((x, y), 7, RED.filled())),
                    )
                    .map_err(|e| anyhow::anyhow!("plot: {e}"))?
                    .label(s.name)
                    .legend(|(x, y)| TriangleMarker::new((x, y), 6, RED.filled()));
            }
            SeriesStyle::Measured => {
                let green = RGBColor(0, 140, 60);
                chart
                    .draw_series(
                        s.points
                            .iter()
                            .map(move |&(x, y)| Circle::new((x, y), 5, green.filled())),
                    )
                    .map_err(|e| anyhow::anyhow!("plot: {e}"))?
                    .label(s.name)
                    .legend(move |(x, y)| Circle::new((x, y), 4, green.filled()));
            }
            SeriesStyle::Baselines => {
                let orange = RGBColor(230, 120, 0);
                chart
                    .draw_series(
                        s.points
                            .iter()
                            .map(move |&(x, y)| Cross::new((x, y), 5, orange.stroke_width(2))),
                    )
                    .map_err(|e| anyhow::anyhow!("plot: {e}"))?
                    .label(s.name)
                    .legend(move |(x, y)| Cross::new((x, y), 4, orange.stroke_width(2)));
            }
        }
    }
    for (x, y, text) in labels {
        chart
            .draw_series(std::iter::once(Text::new(
                text.clone(),
                (*x, *y),
                ("sans-serif", 13),
            )))
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    Ok(())
}

/// Writes `stem.svg` and `stem.png`; returns the files written. Text needs
/// the DejaVu font (Debian's `fonts-dejavu-core`, installed by
/// `scripts/setup.sh`).
pub fn scatter(
    stem: &Path,
    title: &str,
    x_label: &str,
    series: &[Series],
    labels: &[(f64, f64, String)],
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    if !register_font() {
        anyhow::bail!("plots need the font {FONT} (Debian package fonts-dejavu-core)");
    }
    let mut written = Vec::new();
    let svg = stem.with_extension("svg");
    {
        let root = SVGBackend::new(&svg, (900, 600)).into_drawing_area();
        draw(root, title, x_label, series, labels)?;
    }
    written.push(svg);
    let png = stem.with_extension("png");
    {
        let root = BitMapBackend::new(&png, (900, 600)).into_drawing_area();
        draw(root, title, x_label, series, labels)?;
    }
    written.push(png);
    Ok(written)
}
