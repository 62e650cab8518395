//! Comparing computed values with golden ones, where NaN and infinity are failures, never "no difference".
//!
//! `f32::max` drops NaN, so a fold of `|a - b|` with it reports 0 for an all-NaN output. Every golden check
//! (the tests, `forward --golden`, `quickstart`) goes through [`max_abs_diff`] instead.
//!
//! ```
//! use neuron_spec::compare::{max_abs_diff, Mismatch};
//! assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.0, 2.5]), Ok(0.5));
//! assert!(matches!(max_abs_diff(&[f32::NAN], &[0.0]), Err(Mismatch::NotFinite { index: 0, .. })));
//! ```

/// Why two arrays could not be compared by their largest difference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mismatch {
    /// The lengths differ.
    Length {
        /// Elements computed.
        actual: usize,
        /// Elements expected.
        expected: usize,
    },
    /// An element is NaN or infinite on either side (the first one found).
    NotFinite {
        /// Its flat index.
        index: usize,
        /// The computed value there.
        actual: f32,
        /// The expected value there.
        expected: f32,
    },
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Length { actual, expected } => write!(f, "{actual} values computed, {expected} expected"),
            Mismatch::NotFinite { index, actual, expected } => {
                write!(f, "a non-finite value at flat index {index}: computed {actual}, expected {expected}")
            }
        }
    }
}

impl std::error::Error for Mismatch {}

/// The largest `|actual[i] - expected[i]|`, or why there is none: a length mismatch, or a NaN/infinity in
/// either array.
pub fn max_abs_diff(actual: &[f32], expected: &[f32]) -> Result<f32, Mismatch> {
    if actual.len() != expected.len() {
        return Err(Mismatch::Length { actual: actual.len(), expected: expected.len() });
    }
    let mut max = 0f32;
    for (index, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        if !a.is_finite() || !e.is_finite() {
            return Err(Mismatch::NotFinite { index, actual: a, expected: e });
        }
        let d = (a - e).abs();
        if d > max {
            max = d;
        }
    }
    Ok(max)
}

/// The mean `|actual[i] - expected[i]|` (same failures as [`max_abs_diff`]; 0 for empty arrays).
pub fn mean_abs_diff(actual: &[f32], expected: &[f32]) -> Result<f64, Mismatch> {
    max_abs_diff(actual, expected)?;
    if actual.is_empty() {
        return Ok(0.0);
    }
    let sum: f64 = actual.iter().zip(expected).map(|(a, e)| f64::from((a - e).abs())).sum();
    Ok(sum / actual.len() as f64)
}

/// Checks `max_abs_diff(actual, expected) <= tol`; the error says what failed and by how much.
pub fn check_close(what: &str, actual: &[f32], expected: &[f32], tol: f32) -> Result<f32, String> {
    match max_abs_diff(actual, expected) {
        Ok(d) if d <= tol => Ok(d),
        Ok(d) => Err(format!("{what}: max_abs_diff {d:e} is above {tol:e}")),
        Err(m) => Err(format!("{what}: {m}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_and_inf_fail_on_either_side() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(matches!(max_abs_diff(&[0.0, bad], &[0.0, 1.0]), Err(Mismatch::NotFinite { index: 1, .. })));
            assert!(matches!(max_abs_diff(&[0.0, 1.0], &[bad, 1.0]), Err(Mismatch::NotFinite { index: 0, .. })));
        }
        // An all-NaN output is a failure, not a difference of 0.
        assert!(max_abs_diff(&[f32::NAN; 4], &[f32::NAN; 4]).is_err());
        assert!(check_close("x", &[f32::NAN], &[0.0], 1.0).is_err());
    }

    #[test]
    fn lengths_and_values() {
        assert_eq!(max_abs_diff(&[1.0], &[1.0, 2.0]), Err(Mismatch::Length { actual: 1, expected: 2 }));
        assert_eq!(max_abs_diff(&[1.0, -3.0], &[1.5, -1.0]), Ok(2.0));
        assert_eq!(max_abs_diff(&[], &[]), Ok(0.0));
        assert_eq!(mean_abs_diff(&[1.0, -3.0], &[1.5, -1.0]), Ok(1.25));
        assert!(check_close("x", &[1.0], &[1.1], 0.05).is_err());
        assert!(check_close("x", &[1.0], &[1.01], 0.05).is_ok());
    }
}
