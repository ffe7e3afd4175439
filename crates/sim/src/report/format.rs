//! How the report's numbers are written for people: one function per kind of figure, used
//! by both the terminal table and the HTML page so that they cannot disagree.
//!
//! Non-finite values are written `NaN` (or `inf`) rather than hidden: they mean the
//! simulator computed something wrong, and the reader should see it.

/// Bytes per GiB, as a float (the unit every chart and most cells use).
pub const GIB: f64 = (1u64 << 30) as f64;

/// What to write in place of a figure that has no value (`None`).
pub const MISSING: &str = "-";

/// A non-finite float as text, or `None` when it is finite.
fn non_finite(v: f64) -> Option<String> {
    if v.is_nan() {
        Some("NaN".to_owned())
    } else if v.is_infinite() {
        Some(if v > 0.0 { "inf" } else { "-inf" }.to_owned())
    } else {
        None
    }
}

/// A size in bytes with a binary unit and two decimals: `1.50 GiB`, `512.00 MiB`, `12 B`.
pub fn bytes(v: f64) -> String {
    if let Some(s) = non_finite(v) {
        return s;
    }
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let sign = if v < 0.0 { "-" } else { "" };
    let mut x = v.abs();
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{sign}{x:.0} B")
    } else {
        format!("{sign}{x:.2} {}", UNITS[unit])
    }
}

/// An optional size: [`bytes`] or [`MISSING`].
pub fn opt_bytes(v: Option<f64>) -> String {
    v.map_or_else(|| MISSING.to_owned(), bytes)
}

/// A fraction as a percentage with one decimal: `0.1234` is `12.3%`.
pub fn percent(fraction: f64) -> String {
    if let Some(s) = non_finite(fraction) {
        return s;
    }
    format!("{:.1}%", fraction * 100.0)
}

/// An optional fraction: [`percent`] or [`MISSING`].
pub fn opt_percent(fraction: Option<f64>) -> String {
    fraction.map_or_else(|| MISSING.to_owned(), percent)
}

/// The unit paging volume is written in: GiB-seconds, or GiB-hours once that reads better
/// (from 3600 GiB-s on), so that a long trace does not print a nine-digit figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteSecondsUnit {
    /// GiB-s.
    GibSeconds,
    /// GiB-h.
    GibHours,
}

impl ByteSecondsUnit {
    /// The unit for a column holding `values` (byte-seconds): one unit for the whole
    /// column, chosen by its largest finite magnitude, so rows compare at a glance.
    pub fn for_values(values: impl IntoIterator<Item = f64>) -> Self {
        let max = values
            .into_iter()
            .filter(|v| v.is_finite())
            .fold(0.0, |m: f64, v| m.max(v.abs()));
        if max / GIB >= 3600.0 {
            ByteSecondsUnit::GibHours
        } else {
            ByteSecondsUnit::GibSeconds
        }
    }
}

/// Byte-seconds of paging in `unit`, two decimals: `12.50 GiB-s`, `2.00 GiB-h`.
pub fn byte_seconds_in(v: f64, unit: ByteSecondsUnit) -> String {
    if let Some(s) = non_finite(v) {
        return s;
    }
    let gib_s = v / GIB;
    match unit {
        ByteSecondsUnit::GibSeconds => format!("{gib_s:.2} GiB-s"),
        ByteSecondsUnit::GibHours => format!("{:.2} GiB-h", gib_s / 3600.0),
    }
}

/// Byte-seconds of paging in the unit that suits this one value
/// ([`ByteSecondsUnit::for_values`] of it alone).
pub fn byte_seconds(v: f64) -> String {
    byte_seconds_in(v, ByteSecondsUnit::for_values([v]))
}

/// A duration in seconds, with fewer decimals as it grows: `0.25 s`, `12.5 s`, `1234 s`.
pub fn seconds(v: f64) -> String {
    if let Some(s) = non_finite(v) {
        return s;
    }
    if v.abs() < 10.0 {
        format!("{v:.2} s")
    } else if v.abs() < 1000.0 {
        format!("{v:.1} s")
    } else {
        format!("{v:.0} s")
    }
}

/// An optional duration: [`seconds`] or [`MISSING`].
pub fn opt_seconds(v: Option<f64>) -> String {
    v.map_or_else(|| MISSING.to_owned(), seconds)
}

/// A rate with two decimals (target changes per VM-hour).
pub fn rate(v: f64) -> String {
    if let Some(s) = non_finite(v) {
        return s;
    }
    format!("{v:.2}")
}

/// A virtual duration for the page's header: `45 s`, `30 min`, `6.0 h`.
pub fn duration(v: f64) -> String {
    if let Some(s) = non_finite(v) {
        return s;
    }
    if v < 120.0 {
        format!("{v:.0} s")
    } else if v < 2.0 * 3600.0 {
        format!("{:.1} min", v / 60.0)
    } else {
        format!("{:.1} h", v / 3600.0)
    }
}

/// A value exactly as `results.json` writes it (`null` for `None` and non-finite floats),
/// for the page's `data-value` attributes: a tool reading the page gets the file's numbers.
pub fn raw<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_pick_a_binary_unit() {
        assert_eq!(bytes(1.5 * GIB), "1.50 GiB");
        assert_eq!(bytes(512.0 * 1024.0 * 1024.0), "512.00 MiB");
        assert_eq!(bytes(12.0), "12 B");
        assert_eq!(bytes(-2.0 * GIB), "-2.00 GiB");
        assert_eq!(bytes(f64::NAN), "NaN");
        assert_eq!(opt_bytes(None), MISSING);
    }

    #[test]
    fn percentages_and_times() {
        assert_eq!(percent(0.1234), "12.3%");
        assert_eq!(percent(-0.05), "-5.0%");
        assert_eq!(opt_percent(None), "-");
        assert_eq!(seconds(0.25), "0.25 s");
        assert_eq!(seconds(12.54), "12.5 s");
        assert_eq!(seconds(1234.4), "1234 s");
        assert_eq!(seconds(f64::INFINITY), "inf");
        assert_eq!(duration(45.0), "45 s");
        assert_eq!(duration(1800.0), "30.0 min");
        assert_eq!(duration(6.0 * 3600.0), "6.0 h");
    }

    #[test]
    fn paging_switches_to_hours() {
        assert_eq!(byte_seconds(10.0 * GIB), "10.00 GiB-s");
        assert_eq!(byte_seconds(7200.0 * GIB), "2.00 GiB-h");
        let unit = ByteSecondsUnit::for_values([10.0 * GIB, 7200.0 * GIB, f64::INFINITY]);
        assert_eq!(unit, ByteSecondsUnit::GibHours);
        assert_eq!(byte_seconds_in(1800.0 * GIB, unit), "0.50 GiB-h");
        assert_eq!(ByteSecondsUnit::for_values([]), ByteSecondsUnit::GibSeconds);
    }

    #[test]
    fn raw_matches_json() {
        assert_eq!(raw(&0.5f64), "0.5");
        assert_eq!(raw(&f64::NAN), "null");
        assert_eq!(raw(&None::<f64>), "null");
        assert_eq!(raw(&7u64), "7");
    }

    proptest::proptest! {
        #[test]
        fn bytes_never_panics_and_has_a_unit(v in proptest::num::f64::ANY) {
            let s = bytes(v);
            proptest::prop_assert!(!s.is_empty());
            if v.is_finite() {
                proptest::prop_assert!(s.ends_with('B'), "{s}");
            }
        }
    }
}
