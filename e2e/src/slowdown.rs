//! One factor for machines slower than those the tests' limits were set
//! on: `IMDS_GUARD_TEST_SLOWDOWN` (a whole number, default 1). `cargo xtask
//! vm-test` sets it in an emulated guest, about 100 times slower than
//! native.
//!
//! Time limits are multiplied by it and load-volume floors (how much a
//! storm or a hammer must have done to have tested anything) divided by it.
//! Verdicts, counts and exact accounting never change with it.

use std::{sync::OnceLock, time::Duration};

/// The factor; panics on a value that is not a whole number ≥ 1, rather
/// than run with limits nobody asked for.
pub fn slowdown() -> u32 {
    static FACTOR: OnceLock<u32> = OnceLock::new();
    *FACTOR.get_or_init(|| match std::env::var("IMDS_GUARD_TEST_SLOWDOWN") {
        Err(_) => 1,
        Ok(v) => match v.trim().parse() {
            Ok(n) if n >= 1 => n,
            _ => panic!("IMDS_GUARD_TEST_SLOWDOWN={v:?}: want a whole number ≥ 1"),
        },
    })
}

/// A time limit, stretched by the factor.
pub fn scaled(limit: Duration) -> Duration {
    limit * slowdown()
}

/// A load-volume floor, lowered by the factor (never below 1).
pub fn floor(n: u64) -> u64 {
    (n / u64::from(slowdown())).max(1)
}
