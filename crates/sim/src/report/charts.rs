//! The report's charts: SVG text drawn by plotters' SVG backend into a `String`.
//!
//! Text is written as SVG `<text>` elements and laid out by the browser, so no font file
//! is needed (plotters' built-in size estimate places the labels). Long series are thinned
//! to [`MAX_POINTS`] samples per line before drawing: a page with a hundred charts of
//! 50 000 points each would not open.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use thiserror::Error;

use super::format::GIB;
use crate::record::RunResult;

/// Samples kept per line: about one per pixel of a wide chart, more would not show.
pub const MAX_POINTS: usize = 2000;

/// The font family written into the SVG; the page's CSS system font stack is not
/// available to plotters, and `sans-serif` resolves to the same kind of face.
const FONT: &str = "sans-serif";

/// Why a chart could not be drawn.
#[derive(Debug, Error)]
pub enum ChartError {
    /// plotters refused to draw (its error, as text: its type is generic over the backend).
    #[error("cannot draw the chart: {0}")]
    Draw(String),
}

/// Turns any plotters error into a [`ChartError`].
fn draw_err<E: std::fmt::Display>(e: E) -> ChartError {
    ChartError::Draw(e.to_string())
}

/// Colours the report uses, one per kind of line (the same in every chart, so a reader
/// learns them once).
pub mod colors {
    use plotters::style::RGBColor;
    /// Memory assigned to the guest.
    pub const ASSIGNED: RGBColor = RGBColor(31, 119, 180);
    /// The balancer's target.
    pub const TARGET: RGBColor = RGBColor(255, 127, 14);
    /// The guest's demand (committed memory).
    pub const COMMITTED: RGBColor = RGBColor(60, 60, 60);
    /// Demand above assigned memory.
    pub const PAGED: RGBColor = RGBColor(214, 39, 40);
    /// Host memory assigned to no guest.
    pub const HOST_FREE: RGBColor = RGBColor(44, 160, 44);
    /// Measured resident guest memory.
    pub const RESIDENT: RGBColor = RGBColor(148, 103, 189);
    /// The scatter chart's points.
    pub const POINT: RGBColor = RGBColor(31, 119, 180);
}

/// One line of a time chart.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// The legend's text (the chart does not draw it; the caller's legend does).
    pub label: &'a str,
    /// The line's colour.
    pub color: RGBColor,
    /// Bytes, one per sample time.
    pub values: &'a [u64],
    /// When thinning, keep each bucket's largest value (for spikes that matter, such as
    /// paging) instead of its first.
    pub keep_peaks: bool,
    /// Stroke width in pixels.
    pub width: u32,
}

/// Thins `(t, value)` pairs to at most `max_points` (when `max_points > 0`) by cutting
/// them into equal buckets and keeping one sample of each: the largest when `keep_peaks`
/// (at the time it happened), otherwise the first. Pairs past the shorter of the two
/// slices, and pairs whose time is not finite, are dropped.
pub fn thin(t_s: &[f64], values: &[u64], max_points: usize, keep_peaks: bool) -> Vec<(f64, u64)> {
    let pairs: Vec<(f64, u64)> = t_s
        .iter()
        .zip(values)
        .filter(|(t, _)| t.is_finite())
        .map(|(t, v)| (*t, *v))
        .collect();
    if max_points == 0 || pairs.len() <= max_points {
        return pairs;
    }
    let bucket = pairs.len().div_ceil(max_points);
    pairs
        .chunks(bucket)
        .filter_map(|chunk| {
            if keep_peaks {
                // max_by_key keeps the last of equal maxima; any is as good.
                chunk.iter().copied().max_by_key(|(_, v)| *v)
            } else {
                chunk.first().copied()
            }
        })
        .collect()
}

/// The unit of a time axis, chosen from the span so that labels stay short.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeUnit {
    /// Up to two minutes.
    Seconds,
    /// Up to two hours.
    Minutes,
    /// Beyond.
    Hours,
}

impl TimeUnit {
    /// The unit for a span of `span_s` seconds.
    pub fn for_span(span_s: f64) -> Self {
        if span_s.is_nan() || span_s <= 120.0 {
            TimeUnit::Seconds
        } else if span_s <= 2.0 * 3600.0 {
            TimeUnit::Minutes
        } else {
            TimeUnit::Hours
        }
    }

    /// Seconds per unit.
    pub fn seconds(self) -> f64 {
        match self {
            TimeUnit::Seconds => 1.0,
            TimeUnit::Minutes => 60.0,
            TimeUnit::Hours => 3600.0,
        }
    }

    /// The axis description.
    pub fn label(self) -> &'static str {
        match self {
            TimeUnit::Seconds => "virtual time (s)",
            TimeUnit::Minutes => "virtual time (min)",
            TimeUnit::Hours => "virtual time (h)",
        }
    }
}

/// The largest magnitude an axis reaches (1e15 seconds or GiB: far beyond any real run):
/// plotters maps coordinates through `i32` pixel offsets and overflows on spans it cannot
/// represent, so absurd inputs are pinned here instead.
const AXIS_LIMIT: f64 = 1e15;

/// A range that plotters can map: finite, within [`AXIS_LIMIT`], and not empty (a zero
/// span would divide by zero when mapping coordinates).
fn safe_range(lo: f64, hi: f64) -> (f64, f64) {
    let pin = |v: f64, default: f64| {
        if v.is_finite() {
            v.clamp(-AXIS_LIMIT, AXIS_LIMIT)
        } else {
            default
        }
    };
    let lo = pin(lo, 0.0);
    let hi = pin(hi, lo + 1.0);
    if hi > lo { (lo, hi) } else { (lo, lo + 1.0) }
}

/// `v` pinned into `range`: a point outside it would map to a pixel offset past `i32`.
fn clip(v: f64, (lo, hi): (f64, f64)) -> f64 {
    if v.is_nan() { lo } else { v.clamp(lo, hi) }
}

/// Removes the SVG namespace attribute plotters writes: inline SVG in HTML does not need
/// it, and the page promises to name no URL at all.
fn inline(svg: String) -> String {
    svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1)
}

/// A chart of byte series over time, in GiB. `size` is in pixels. It has no legend of its
/// own: the page writes one in HTML beside the charts (see [`Line::label`]), where it
/// cannot cover a line and one legend serves a whole grid of guests.
pub fn time_chart(
    title: &str,
    t_s: &[f64],
    lines: &[Line<'_>],
    size: (u32, u32),
) -> Result<String, ChartError> {
    let thinned: Vec<Vec<(f64, u64)>> = lines
        .iter()
        .map(|l| thin(t_s, l.values, MAX_POINTS, l.keep_peaks))
        .collect();
    let finite_t = t_s.iter().copied().filter(|t| t.is_finite());
    let t_lo = finite_t.clone().fold(f64::INFINITY, f64::min);
    let t_hi = finite_t.fold(f64::NEG_INFINITY, f64::max);
    let unit = TimeUnit::for_span(if t_hi > t_lo { t_hi - t_lo } else { 0.0 });
    let (x0, x1) = safe_range(t_lo / unit.seconds(), t_hi / unit.seconds());
    let y_max = thinned.iter().flatten().map(|(_, v)| *v).max().unwrap_or(0) as f64 / GIB;
    let (y0, y1) = safe_range(0.0, y_max * 1.08);

    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 17))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(draw_err)?;
        let y_fmt = |v: &f64| axis_number(*v, y1 - y0);
        let x_fmt = |v: &f64| axis_number(*v, x1 - x0);
        chart
            .configure_mesh()
            .x_desc(unit.label())
            .y_desc("GiB")
            .x_labels(8)
            .y_labels(6)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 15))
            .max_light_lines(2)
            .light_line_style(RGBColor(242, 242, 242))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(draw_err)?;
        for (line, points) in lines.iter().zip(&thinned) {
            if points.is_empty() {
                continue;
            }
            let scale = unit.seconds();
            chart
                .draw_series(LineSeries::new(
                    points
                        .iter()
                        .map(|(t, v)| (clip(t / scale, (x0, x1)), clip(*v as f64 / GIB, (y0, y1)))),
                    line.color.stroke_width(line.width.max(1)),
                ))
                .map_err(draw_err)?;
        }
        if thinned.iter().all(|p| p.is_empty()) {
            let (cx, cy) = chart.backend_coord(&((x0 + x1) / 2.0, (y0 + y1) / 2.0));
            root.draw(&Text::new(
                "no samples",
                (cx, cy),
                TextStyle::from((FONT, 16).into_font())
                    .color(&RGBColor(120, 120, 120))
                    .pos(Pos::new(HPos::Center, VPos::Center)),
            ))
            .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(inline(buf))
}

/// An axis tick label with as few decimals as the axis span needs, trailing zeros cut
/// (`1`, `1.5`, `2` rather than `1.0`, `1.5`, `2.0`).
fn axis_number(v: f64, span: f64) -> String {
    let decimals = if span >= 20.0 {
        0
    } else if span >= 2.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    };
    if s == "-0" { "0".to_owned() } else { s }
}

/// The "footprint against paging" scatter chart: one labelled point per policy run, x the
/// percentage of VM-seconds paging, y the average footprint in GiB: assigned memory, or
/// for a run with free page reporting (`POLICY+fpr`) the backed memory, what the host
/// really holds for it. Down and to the left is better. Runs whose figures are not finite
/// are left out.
pub fn footprint_paging_scatter(
    result: &RunResult,
    size: (u32, u32),
) -> Result<String, ChartError> {
    let labels: Vec<String> = result
        .policies
        .iter()
        .map(|p| crate::compare::run_label(&p.metrics.policy, p.metrics.free_page_reporting))
        .collect();
    let points: Vec<(&str, f64, f64)> = result
        .policies
        .iter()
        .zip(&labels)
        .map(|(p, label)| {
            let m = &p.metrics;
            let footprint = if m.free_page_reporting {
                m.footprint_backed_bytes_avg
            } else {
                m.footprint_assigned_bytes_avg
            };
            (
                label.as_str(),
                m.paging_vm_seconds_fraction * 100.0,
                footprint / GIB,
            )
        })
        .filter(|(_, x, y)| x.is_finite() && y.is_finite())
        .collect();
    let any_reporting = result
        .policies
        .iter()
        .any(|p| p.metrics.free_page_reporting);
    let x_max = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let y_max = points.iter().map(|p| p.2).fold(0.0, f64::max);
    let x_min = points.iter().map(|p| p.1).fold(0.0, f64::min);
    let y_min = points.iter().map(|p| p.2).fold(0.0, f64::min);
    let (x0, x1) = safe_range(x_min * 1.2, (x_max * 1.2).max(1.0));
    let (y0, y1) = safe_range(y_min * 1.15, y_max * 1.15);
    let points: Vec<(&str, f64, f64)> = points
        .into_iter()
        .map(|(n, x, y)| (n, clip(x, (x0, x1)), clip(y, (y0, y1))))
        .collect();

    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("footprint against paging", (FONT, 17))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(draw_err)?;
        let y_fmt = |v: &f64| axis_number(*v, y1 - y0);
        let x_fmt = |v: &f64| axis_number(*v, x1 - x0);
        chart
            .configure_mesh()
            .x_desc("paging (% of VM-seconds)")
            .y_desc(if any_reporting {
                "average footprint (GiB; backed for +fpr)"
            } else {
                "average assigned footprint (GiB)"
            })
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 15))
            .max_light_lines(2)
            .light_line_style(RGBColor(242, 242, 242))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(draw_err)?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|(_, x, y)| Circle::new((*x, *y), 6, colors::POINT.filled())),
            )
            .map_err(draw_err)?;
        // Labels go beside their point, on the first side where they overlap no label
        // and no point already placed (policies often land close together).
        let pixels: Vec<(i32, i32)> = points
            .iter()
            .map(|(_, x, y)| chart.backend_coord(&(*x, *y)))
            .collect();
        let mut taken: Vec<Rect> = pixels
            .iter()
            .map(|&(px, py)| Rect::around(px, py, 7, 7))
            .collect();
        let (w, h) = (size.0 as i32, size.1 as i32);
        for ((name, _, _), &(px, py)) in points.iter().zip(&pixels) {
            let text_w = (name.chars().count() as i32) * 8 + 4;
            let text_h = 16;
            let candidates = [
                (HPos::Left, VPos::Center, px + 10, py),
                (HPos::Left, VPos::Center, px + 10, py - 16),
                (HPos::Left, VPos::Center, px + 10, py + 16),
                (HPos::Right, VPos::Center, px - 10, py),
                (HPos::Right, VPos::Center, px - 10, py - 16),
                (HPos::Right, VPos::Center, px - 10, py + 16),
                (HPos::Left, VPos::Center, px + 10, py - 32),
                (HPos::Left, VPos::Center, px + 10, py + 32),
            ];
            let boxed = |&(hp, _, x, y): &(HPos, VPos, i32, i32)| {
                let left = if matches!(hp, HPos::Left) {
                    x
                } else {
                    x - text_w
                };
                Rect {
                    x0: left,
                    y0: y - text_h / 2,
                    x1: left + text_w,
                    y1: y + text_h / 2,
                }
            };
            let fits = |r: &Rect| r.x0 >= 0 && r.x1 <= w && r.y0 >= 0 && r.y1 <= h;
            let choice = candidates
                .iter()
                .find(|c| {
                    let r = boxed(c);
                    fits(&r) && !taken.iter().any(|t| t.overlaps(&r))
                })
                .unwrap_or(&candidates[0]);
            taken.push(boxed(choice));
            let (hp, vp, x, y) = *choice;
            root.draw(&Text::new(
                name.to_string(),
                (x, y),
                TextStyle::from((FONT, 15).into_font())
                    .color(&RGBColor(30, 30, 30))
                    .pos(Pos::new(hp, vp)),
            ))
            .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(inline(buf))
}

/// A pixel rectangle, for keeping scatter labels apart.
#[derive(Debug, Clone, Copy)]
struct Rect {
    x0: i32,
    y0: i32,
    x1: i32,
    y1: i32,
}

impl Rect {
    fn around(x: i32, y: i32, rx: i32, ry: i32) -> Self {
        Rect {
            x0: x - rx,
            y0: y - ry,
            x1: x + rx,
            y1: y + ry,
        }
    }

    fn overlaps(&self, o: &Rect) -> bool {
        self.x0 < o.x1 && o.x0 < self.x1 && self.y0 < o.y1 && o.y0 < self.y1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testing::synthetic_result;
    use proptest::prelude::*;

    #[test]
    fn time_chart_is_one_inline_svg() {
        let t: Vec<f64> = (0..100).map(|i| i as f64 * 60.0).collect();
        let v: Vec<u64> = (0..100).map(|i| i * (1 << 26)).collect();
        let svg = time_chart(
            "guest",
            &t,
            &[Line {
                label: "assigned",
                color: colors::ASSIGNED,
                values: &v,
                keep_peaks: false,
                width: 2,
            }],
            (400, 240),
        )
        .expect("draws");
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert!(!svg.contains("http"));
        assert!(svg.contains("virtual time (min)"));
        assert!(svg.contains("<polyline"));
    }

    #[test]
    fn empty_and_odd_input_draws_without_panic() {
        let nan = [f64::NAN, f64::INFINITY];
        for t in [&[][..], &[5.0][..], &nan[..]] {
            let svg = time_chart(
                "x",
                t,
                &[Line {
                    label: "a",
                    color: colors::ASSIGNED,
                    values: &[1, 2, 3],
                    keep_peaks: true,
                    width: 1,
                }],
                (300, 200),
            )
            .expect("draws");
            assert!(svg.contains("<svg"));
        }
        assert!(
            time_chart("x", &[], &[], (300, 200))
                .expect("draws")
                .contains("no samples")
        );
        let mut r = synthetic_result(2, 1, 3);
        r.policies[0].metrics.paging_vm_seconds_fraction = f64::NAN;
        r.policies[1].metrics.footprint_assigned_bytes_avg = f64::INFINITY;
        assert!(footprint_paging_scatter(&r, (400, 300)).is_ok());
        r.policies.clear();
        assert!(footprint_paging_scatter(&r, (400, 300)).is_ok());
    }

    #[test]
    fn scatter_labels_every_policy() {
        let r = synthetic_result(6, 3, 50);
        let svg = footprint_paging_scatter(&r, (700, 420)).expect("draws");
        for p in &r.policies {
            assert!(
                svg.contains(&format!(">{}<", p.metrics.policy)) || svg.contains(&p.metrics.policy)
            );
        }
        assert_eq!(svg.matches("<circle").count(), 6);
    }

    #[test]
    fn a_reporting_run_is_its_own_point_at_its_backed_footprint() {
        let mut r = synthetic_result(2, 3, 50);
        r.policies[1].metrics.policy = r.policies[0].metrics.policy.clone();
        r.policies[1].metrics.free_page_reporting = true;
        r.policies[1].metrics.footprint_backed_bytes_avg =
            r.policies[0].metrics.footprint_assigned_bytes_avg / 2.0;
        let svg = footprint_paging_scatter(&r, (700, 420)).expect("draws");
        let label = format!("{}+fpr", r.policies[0].metrics.policy);
        assert!(svg.contains(&label), "{label} is labelled");
        assert!(svg.contains("backed for +fpr"));
        assert_eq!(svg.matches("<circle").count(), 2);
    }

    #[test]
    fn axis_numbers_are_short() {
        assert_eq!(axis_number(1.0, 6.0), "1");
        assert_eq!(axis_number(1.5, 6.0), "1.5");
        assert_eq!(axis_number(0.25, 1.0), "0.25");
        assert_eq!(axis_number(40.0, 70.0), "40");
        assert_eq!(axis_number(-0.0001, 1.0), "0");
    }

    #[test]
    fn time_unit_follows_span() {
        assert_eq!(TimeUnit::for_span(60.0), TimeUnit::Seconds);
        assert_eq!(TimeUnit::for_span(3600.0), TimeUnit::Minutes);
        assert_eq!(TimeUnit::for_span(6.0 * 3600.0), TimeUnit::Hours);
        assert_eq!(TimeUnit::for_span(f64::NAN), TimeUnit::Seconds);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn charts_draw_any_numbers(
            t in proptest::collection::vec(proptest::num::f64::ANY, 0..40),
            v in proptest::collection::vec(proptest::num::u64::ANY, 0..40),
            fp in proptest::num::f64::ANY,
            paging in proptest::num::f64::ANY,
        ) {
            let line = Line {
                label: "a",
                color: colors::ASSIGNED,
                values: &v,
                keep_peaks: true,
                width: 2,
            };
            let svg = time_chart("t", &t, &[line], (300, 200)).expect("draws");
            prop_assert_eq!(svg.matches("<svg").count(), 1);
            let mut r = synthetic_result(3, 1, 2);
            r.policies[0].metrics.footprint_assigned_bytes_avg = fp;
            r.policies[1].metrics.paging_vm_seconds_fraction = paging;
            let svg = footprint_paging_scatter(&r, (400, 300)).expect("draws");
            prop_assert_eq!(svg.matches("<svg").count(), 1);
        }

        #[test]
        fn thinning_bounds_length_and_keeps_peaks(
            values in proptest::collection::vec(0u64..1_000_000, 0..6000),
            max_points in 1usize..3000,
        ) {
            let t: Vec<f64> = (0..values.len()).map(|i| i as f64).collect();
            let peaks = thin(&t, &values, max_points, true);
            prop_assert!(peaks.len() <= max_points);
            prop_assert_eq!(
                peaks.iter().map(|p| p.1).max(),
                values.iter().copied().max()
            );
            // Times stay in order, so the line does not fold back.
            prop_assert!(peaks.windows(2).all(|w| w[0].0 < w[1].0));
            let firsts = thin(&t, &values, max_points, false);
            prop_assert!(firsts.len() <= max_points);
            if values.len() <= max_points {
                prop_assert_eq!(firsts.len(), values.len());
            }
        }
    }
}
