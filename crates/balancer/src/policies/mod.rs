//! The policies: what each VM should have, before the arbiter's rules.
//!
//! Each keeps its own per-VM history indexed by snapshot position (like the arbiter, a
//! list that grows or shrinks at its end is handled).

pub mod ballast;
pub mod hyperv;
pub mod oracle;
pub mod proportional;
pub mod static_startup;
pub mod vpa;

pub use ballast::Ballast;
pub use hyperv::HyperV;
pub use oracle::Oracle;
pub use proportional::Proportional;
pub use static_startup::Static;
pub use vpa::Vpa;

/// `a x num / den` in `u128`, saturated to `u64`: percentages of any byte count.
pub(crate) fn scale(a: u64, num: u64, den: u64) -> u64 {
    if den == 0 {
        return u64::MAX;
    }
    let v = u128::from(a) * u128::from(num) / u128::from(den);
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Seconds from `since` to `now`: 0 when negative or not finite.
pub(crate) fn dt(now: f64, since: f64) -> f64 {
    let d = now - since;
    if d.is_finite() && d > 0.0 { d } else { 0.0 }
}

/// An `f64` byte amount as `u64`: negative and NaN give 0, too large gives `u64::MAX`.
pub(crate) fn bytes(v: f64) -> u64 {
    // `as` saturates and maps NaN to 0.
    v as u64
}
