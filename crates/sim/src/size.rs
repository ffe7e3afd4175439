//! Memory sizes as people write them: `"512M"`, `"2G"`, `"1.5G"`, `"8GiB"`, `"64k"`, or a
//! plain number of bytes.
//!
//! Suffixes are binary multiples (K = 1024, M = 1024², G = 1024³, T = 1024⁴) whether or not
//! the `i` is written, because memory is sized in powers of two and a scenario saying `2G`
//! means the 2 GiB a VM configuration would show. The letter may be followed by `i`, `iB`
//! or `B`; a lone `B` means bytes. Case does not matter and blanks around the number and
//! between number and suffix are allowed. A fraction is allowed (`1.5G`); the result is
//! rounded to the nearest byte.
//!
//! [`serde_size`] and [`serde_size_opt`] let a serde field accept either an integer (bytes)
//! or such a string, so a TOML scenario can say `host_memory = "12G"` or
//! `host_memory = 12884901888`.

use thiserror::Error;

/// Why a size did not parse. Every variant carries the text that was given.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SizeError {
    /// Nothing (or only blanks) was given.
    #[error("empty size")]
    Empty,
    /// A minus sign: sizes are never negative.
    #[error("size {0:?} is negative")]
    Negative(String),
    /// The number part is missing or malformed.
    #[error("size {0:?} does not start with a number")]
    NotANumber(String),
    /// The text after the number is not K, M, G or T (with optional `i`, `iB`, `B`) or `B`.
    #[error("size {0:?} has an unknown suffix (expected K, M, G or T, optionally with i, iB or B)")]
    BadSuffix(String),
    /// The value does not fit in 64 bits of bytes.
    #[error("size {0:?} is too large")]
    Overflow(String),
}

/// One KiB.
pub const KIB: u64 = 1 << 10;
/// One MiB.
pub const MIB: u64 = 1 << 20;
/// One GiB.
pub const GIB: u64 = 1 << 30;
/// One TiB.
pub const TIB: u64 = 1 << 40;

/// Parses a size such as `"512M"`, `"1.5G"`, `"8GiB"`, `"64k"` or `"4096"` into bytes.
///
/// # Errors
///
/// [`SizeError`] for an empty, negative, malformed, unknown-suffix or too-large size.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    if s.starts_with('-') {
        return Err(SizeError::Negative(text.to_owned()));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let multiplier = suffix_multiplier(suffix.trim()).ok_or_else(|| {
        if number.is_empty() {
            SizeError::NotANumber(text.to_owned())
        } else {
            SizeError::BadSuffix(text.to_owned())
        }
    })?;
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    // "1." and ".5" are accepted as 1 and 0.5; "." alone and "1.2.3" are not numbers.
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(SizeError::NotANumber(text.to_owned()));
    }
    let overflow = || SizeError::Overflow(text.to_owned());
    let mut value: u128 = 0;
    for d in int_part.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(d - b'0')))
            .filter(|v| *v <= u128::from(u64::MAX))
            .ok_or_else(overflow)?;
    }
    let mut bytes = value
        .checked_mul(u128::from(multiplier))
        .ok_or_else(overflow)?;
    // The fraction: digits beyond 30 cannot change a u64 result after rounding, and
    // dropping them keeps the arithmetic in u128.
    let frac_digits: &str = frac_part.get(..frac_part.len().min(30)).unwrap_or("");
    if !frac_digits.is_empty() {
        let mut numerator: u128 = 0;
        let mut denominator: u128 = 1;
        for d in frac_digits.bytes() {
            numerator = numerator * 10 + u128::from(d - b'0');
            denominator *= 10;
        }
        // numerator < denominator <= 10^30 and multiplier <= 2^40: the product fits.
        let scaled = numerator * u128::from(multiplier);
        bytes += (scaled + denominator / 2) / denominator;
    }
    u64::try_from(bytes).map_err(|_| overflow())
}

/// The multiplier a suffix stands for, `None` if it is not one.
fn suffix_multiplier(suffix: &str) -> Option<u64> {
    let lower = suffix.to_ascii_lowercase();
    if lower.is_empty() || lower == "b" {
        return Some(1);
    }
    let mut chars = lower.chars();
    let unit = match chars.next()? {
        'k' => KIB,
        'm' => MIB,
        'g' => GIB,
        't' => TIB,
        _ => return None,
    };
    match chars.as_str() {
        "" | "i" | "ib" | "b" => Some(unit),
        _ => None,
    }
}

/// Formats bytes for people: the largest binary unit the value reaches, two decimals
/// (`"1.50 GiB"`, `"512.00 MiB"`), or whole bytes below 1 KiB (`"512 B"`).
#[must_use]
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit {
            // f64 loses precision beyond 2^53 bytes, far below what two decimals show.
            #[allow(clippy::cast_precision_loss)]
            let value = bytes as f64 / unit as f64;
            return format!("{value:.2} {name}");
        }
    }
    format!("{bytes} B")
}

/// The shortest exact text for a size: the largest suffix that divides it (`"2G"`,
/// `"1536M"`), or the plain byte count. [`parse_size`] reads it back to the same value.
#[must_use]
pub fn size_to_string(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(TIB, "T"), (GIB, "G"), (MIB, "M"), (KIB, "K")];
    if bytes != 0 {
        for (unit, name) in UNITS {
            if bytes % unit == 0 {
                return format!("{}{name}", bytes / unit);
            }
        }
    }
    bytes.to_string()
}

/// Serde support for a `u64` size field: reads an integer (bytes) or a string with a
/// suffix, writes the exact short string ([`size_to_string`]). Use as
/// `#[serde(with = "crate::size::serde_size")]`.
pub mod serde_size {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    /// Writes the size as its short exact string: TOML integers are signed 64-bit, so a
    /// string is the one form every `u64` has.
    ///
    /// # Errors
    ///
    /// Whatever the serializer reports.
    #[allow(clippy::trivially_copy_pass_by_ref)] // serde's `with` passes a reference.
    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::size_to_string(*value))
    }

    /// Reads an integer (bytes) or a size string.
    ///
    /// # Errors
    ///
    /// A negative integer, a float, or a string [`super::parse_size`] rejects.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_any(SizeVisitor)
    }

    /// Accepts the forms a size may take.
    pub(super) struct SizeVisitor;

    impl Visitor<'_> for SizeVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size: bytes as an integer, or a string such as \"2G\" or \"512M\"")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("size {v} is negative")))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            Err(E::custom(format!(
                "size {v} is not a whole number of bytes; write a string such as \"1.5G\""
            )))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            super::parse_size(v).map_err(E::custom)
        }
    }
}

/// Serde support for an `Option<u64>` size field (absent means `None`; pair it with
/// `#[serde(default)]`). Use as `#[serde(default, with = "crate::size::serde_size_opt")]`.
pub mod serde_size_opt {
    use serde::{Deserializer, Serializer};

    /// Writes `Some` as [`super::serde_size`] does and `None` as a unit; pair with
    /// `skip_serializing_if = "Option::is_none"` for TOML, which has no null.
    ///
    /// # Errors
    ///
    /// Whatever the serializer reports.
    #[allow(clippy::ref_option)] // serde's `with` passes a reference.
    pub fn serialize<S: Serializer>(value: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => super::serde_size::serialize(v, serializer),
            None => serializer.serialize_none(),
        }
    }

    /// Reads a size as [`super::serde_size`] does.
    ///
    /// # Errors
    ///
    /// As [`super::serde_size::deserialize`].
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<u64>, D::Error> {
        deserializer
            .deserialize_any(super::serde_size::SizeVisitor)
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_usual_forms() {
        assert_eq!(parse_size("512M"), Ok(512 * MIB));
        assert_eq!(parse_size("2G"), Ok(2 * GIB));
        assert_eq!(parse_size("1.5G"), Ok(3 * GIB / 2));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("8GiB"), Ok(8 * GIB));
        assert_eq!(parse_size("64k"), Ok(64 * KIB));
        assert_eq!(parse_size("64KB"), Ok(64 * KIB));
        assert_eq!(parse_size("3ti"), Ok(3 * TIB));
        assert_eq!(parse_size(" 2 g "), Ok(2 * GIB));
        assert_eq!(parse_size("100b"), Ok(100));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size(".5K"), Ok(512));
        assert_eq!(parse_size("1.K"), Ok(1024));
        assert_eq!(parse_size("+1M"), Ok(MIB));
        // 0.1 KiB = 102.4 bytes, rounded to nearest.
        assert_eq!(parse_size("0.1K"), Ok(102));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn rejects_bad_sizes_naming_the_text() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("   "), Err(SizeError::Empty));
        assert_eq!(parse_size("-1G"), Err(SizeError::Negative("-1G".into())));
        assert_eq!(parse_size("G"), Err(SizeError::NotANumber("G".into())));
        assert_eq!(parse_size("abc"), Err(SizeError::NotANumber("abc".into())));
        assert_eq!(parse_size("."), Err(SizeError::NotANumber(".".into())));
        assert_eq!(
            parse_size("1.2.3"),
            Err(SizeError::NotANumber("1.2.3".into()))
        );
        assert_eq!(parse_size("2X"), Err(SizeError::BadSuffix("2X".into())));
        assert_eq!(parse_size("2GG"), Err(SizeError::BadSuffix("2GG".into())));
        assert_eq!(
            parse_size("2 G B"),
            Err(SizeError::BadSuffix("2 G B".into()))
        );
        assert_eq!(
            parse_size("18446744073709551616"),
            Err(SizeError::Overflow("18446744073709551616".into()))
        );
        assert_eq!(
            parse_size("16777216T"),
            Err(SizeError::Overflow("16777216T".into()))
        );
        assert!(parse_size("-1G").unwrap_err().to_string().contains("-1G"));
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_size(3 * GIB / 2), "1.50 GiB");
        assert_eq!(format_size(512 * MIB), "512.00 MiB");
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(2 * TIB), "2.00 TiB");
        assert_eq!(format_size(1536), "1.50 KiB");
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Holder {
        #[serde(with = "serde_size")]
        size: u64,
        #[serde(
            default,
            with = "serde_size_opt",
            skip_serializing_if = "Option::is_none"
        )]
        extra: Option<u64>,
    }

    #[test]
    fn serde_reads_integers_and_strings() {
        let h: Holder = toml::from_str("size = \"2G\"").unwrap();
        assert_eq!(
            h,
            Holder {
                size: 2 * GIB,
                extra: None
            }
        );
        let h: Holder = toml::from_str("size = 4096\nextra = \"1M\"").unwrap();
        assert_eq!(
            h,
            Holder {
                size: 4096,
                extra: Some(MIB)
            }
        );
        let e = toml::from_str::<Holder>("size = -5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("negative"), "{e}");
        let e = toml::from_str::<Holder>("size = 1.5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("whole number"), "{e}");
        let e = toml::from_str::<Holder>("size = \"2Q\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("2Q"), "{e}");
        let text = toml::to_string(&Holder {
            size: 1536 * MIB,
            extra: Some(7),
        })
        .unwrap();
        assert!(text.contains("\"1536M\""), "{text}");
        let back: Holder = toml::from_str(&text).unwrap();
        assert_eq!(
            back,
            Holder {
                size: 1536 * MIB,
                extra: Some(7)
            }
        );
    }

    proptest! {
        #[test]
        fn short_string_round_trips(v in any::<u64>()) {
            prop_assert_eq!(parse_size(&size_to_string(v)), Ok(v));
        }

        #[test]
        fn suffixed_integers_scale(n in 0u64..1_000_000, which in 0usize..4) {
            let (unit, s) = [(KIB, "K"), (MIB, "MiB"), (GIB, "g"), (TIB, "tb")][which];
            prop_assert_eq!(parse_size(&format!("{n}{s}")), Ok(n * unit));
        }

        #[test]
        fn never_panics(s in ".{0,24}") {
            let _ = parse_size(&s);
        }
    }
}
