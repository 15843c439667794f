//! The report's charts, drawn with plotters: as SVG for the HTML page and as PNG copies.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::Error;

/// Width and height of every chart, in pixels.
pub(crate) const SIZE: (u32, u32) = (760, 380);

/// Series colours (saturated, so they stand apart from the grey axes and text).
pub(crate) const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// One line of a line chart.
pub(crate) struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Draw a dot at each point (for sparse series such as validation).
    pub markers: bool,
    /// Dashed (for a series that shadows another).
    pub dashed: bool,
}

/// A chart of lines over training steps.
pub(crate) struct LineChart {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Always show at least this range of y.
    pub y_floor: Option<(f64, f64)>,
}

/// Grouped bars: the share of episodes per turn count, one bar per group.
pub(crate) struct BarChart {
    pub title: String,
    pub x_label: String,
    /// Group labels and their shares per x (index = x).
    pub groups: Vec<(String, Vec<f64>)>,
}

/// A chart of either kind.
pub(crate) enum Chart {
    Lines(LineChart),
    Bars(BarChart),
}

impl Chart {
    /// The chart as an SVG document.
    pub fn svg(&self) -> Result<String, Error> {
        fonts()?;
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(plot_error)?;
        }
        Ok(out)
    }

    /// Writes the chart as a PNG file.
    pub fn png(&self, path: &Path) -> Result<(), Error> {
        fonts()?;
        let root = BitMapBackend::new(path, SIZE).into_drawing_area();
        self.draw(&root)?;
        root.present().map_err(plot_error)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), Error> {
        root.fill(&WHITE).map_err(plot_error)?;
        match self {
            Chart::Lines(c) => draw_lines(root, c),
            Chart::Bars(c) => draw_bars(root, c),
        }
    }
}

fn draw_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart: &LineChart,
) -> Result<(), Error> {
    let points = || chart.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1) = bounds(points().map(|p| p.0)).unwrap_or((0.0, 1.0));
    let (mut y0, mut y1) = bounds(points().map(|p| p.1)).unwrap_or((0.0, 1.0));
    if let Some((lo, hi)) = chart.y_floor {
        y0 = y0.min(lo);
        y1 = y1.max(hi);
    }
    if x1 - x0 < 1.0 {
        x0 -= 0.5;
        x1 += 0.5;
    }
    if y1 - y0 < 1e-9 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let pad = (y1 - y0) * 0.05;
    let mut ctx = ChartBuilder::on(root)
        .caption(&chart.title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(plot_error)?;
    ctx.configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(chart.y_label.as_str())
        .light_line_style(RGBColor(238, 238, 238))
        .draw()
        .map_err(plot_error)?;
    for (i, s) in chart.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let style = ShapeStyle {
            color: color.to_rgba(),
            filled: false,
            stroke_width: 2,
        };
        let legend = move |(x, y): (i32, i32)| PathElement::new(vec![(x, y), (x + 18, y)], style);
        if s.dashed {
            ctx.draw_series(DashedLineSeries::new(s.points.iter().copied(), 6, 4, style))
                .map_err(plot_error)?
                .label(s.label.as_str())
                .legend(legend);
        } else {
            ctx.draw_series(LineSeries::new(s.points.iter().copied(), style))
                .map_err(plot_error)?
                .label(s.label.as_str())
                .legend(legend);
        }
        if s.markers || s.points.len() == 1 {
            ctx.draw_series(s.points.iter().map(|p| Circle::new(*p, 3, style.filled())))
                .map_err(plot_error)?;
        }
    }
    if !chart.series.is_empty() {
        ctx.configure_series_labels()
            .background_style(WHITE.mix(0.7))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(plot_error)?;
    }
    Ok(())
}

fn draw_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart: &BarChart,
) -> Result<(), Error> {
    let width = chart
        .groups
        .iter()
        .map(|g| g.1.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let top = chart
        .groups
        .iter()
        .flat_map(|g| g.1.iter().copied())
        .fold(0.0_f64, f64::max)
        .max(0.05)
        * 1.1;
    let mut ctx = ChartBuilder::on(root)
        .caption(&chart.title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(-0.5..(width as f64 - 0.5), 0.0..top)
        .map_err(plot_error)?;
    ctx.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc("share of episodes")
        .x_labels(width.min(20))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()
        .map_err(plot_error)?;
    let n = chart.groups.len().max(1) as f64;
    let bar = 0.8 / n;
    for (g, (label, shares)) in chart.groups.iter().enumerate() {
        let color = PALETTE[g % PALETTE.len()];
        let left = -0.4 + g as f64 * bar;
        ctx.draw_series(shares.iter().enumerate().map(|(x, share)| {
            let x = x as f64 + left;
            Rectangle::new([(x, 0.0), (x + bar * 0.95, *share)], color.filled())
        }))
        .map_err(plot_error)?
        .label(label.as_str())
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    if !chart.groups.is_empty() {
        ctx.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(plot_error)?;
    }
    Ok(())
}

fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Registers the embedded DejaVu Sans as the charts' font, once: text needs no system font.
fn fonts() -> Result<(), Error> {
    static FONTS: OnceLock<bool> = OnceLock::new();
    let ok = *FONTS.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .is_ok()
            && plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold())
                .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Plot("the embedded font could not be loaded".into()))
    }
}

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::Plot(e.to_string())
}
