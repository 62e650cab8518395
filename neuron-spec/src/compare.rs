//! Comparing computed values with golden ones, where NaN and infinity are failures, never "no difference".
//!
//! `f32::max` drops NaN, so a fold of `|a - b|` with it reports 0 for an all-NaN output. Every golden check
//! (the tests, `forward --golden`, `quickstart`) goes through [`max_abs_diff`] instead, or through
//! [`allclose`] (numpy's rule, `|a - b| <= atol + rtol·|b|`) where the values' scale varies.
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

/// `forward --golden`'s default absolute tolerance: the largest difference accepted near a zero logit.
pub const DEFAULT_ATOL: f32 = 1e-4;
/// `forward --golden`'s default relative tolerance: f32 noise grows with the logits of a deep model (a 30-layer
/// model's correct logits differ from transformers' by 1e-4 at |logit| 36, 3e-6 relative).
pub const DEFAULT_RTOL: f32 = 1e-4;

/// What [`allclose`] found: the verdict and where the largest differences are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Every element satisfies `|a - b| <= atol + rtol * |b|`.
    pub pass: bool,
    /// The absolute tolerance used.
    pub atol: f32,
    /// The relative tolerance used.
    pub rtol: f32,
    /// The largest `|a - b|`.
    pub max_abs: f32,
    /// Its flat index (0 for empty arrays).
    pub max_abs_index: usize,
    /// The largest `|a - b| / |b|` (infinite where `b` is 0 and `a` is not).
    pub max_rel: f32,
    /// Its flat index.
    pub max_rel_index: usize,
    /// How many elements fail the bound.
    pub failures: usize,
    /// The first element that fails it.
    pub first_failure: Option<usize>,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "max_abs_diff {:e} at index {}, max_rel_diff {:e} at index {}; |a - b| <= {:e} + {:e}·|b|: ",
            self.max_abs, self.max_abs_index, self.max_rel, self.max_rel_index, self.atol, self.rtol
        )?;
        match self.first_failure {
            None => write!(f, "pass"),
            Some(i) => write!(f, "{} element(s) outside, the first at index {i}", self.failures),
        }
    }
}

/// numpy's `allclose(actual, expected, rtol, atol)`, elementwise `|a - b| <= atol + rtol·|b|` (`b` the expected
/// value), with the largest absolute and relative differences and where they are. A NaN or infinity on
/// either side, or a length mismatch, is an error (never a pass).
///
/// ```
/// use neuron_spec::compare::allclose;
/// let v = allclose(&[36.0003, 0.5], &[36.0, 0.5], 1e-4, 1e-5).unwrap();
/// assert!(v.pass && v.max_abs_index == 0);
/// assert!(!allclose(&[0.5003], &[0.5], 1e-4, 1e-5).unwrap().pass);
/// assert!(allclose(&[f32::NAN], &[0.0], 1.0, 1.0).is_err());
/// ```
pub fn allclose(actual: &[f32], expected: &[f32], atol: f32, rtol: f32) -> Result<Verdict, Mismatch> {
    max_abs_diff(actual, expected)?; // lengths and finiteness
    let mut v = Verdict {
        pass: true,
        atol,
        rtol,
        max_abs: 0.0,
        max_abs_index: 0,
        max_rel: 0.0,
        max_rel_index: 0,
        failures: 0,
        first_failure: None,
    };
    for (i, (&a, &b)) in actual.iter().zip(expected).enumerate() {
        let d = (a - b).abs();
        let rel = if d == 0.0 { 0.0 } else { d / b.abs() };
        if d > v.max_abs {
            (v.max_abs, v.max_abs_index) = (d, i);
        }
        if rel > v.max_rel {
            (v.max_rel, v.max_rel_index) = (rel, i);
        }
        // Written so that a NaN tolerance fails every element.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        let outside = !(d <= atol + rtol * b.abs());
        if outside {
            v.failures += 1;
            v.first_failure.get_or_insert(i);
        }
    }
    v.pass = v.failures == 0;
    Ok(v)
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

    #[test]
    fn allclose_is_numpys_rule() {
        // numpy.allclose([36.0004, 1.0], [36.0, 1.0], rtol=1e-5, atol=1e-4) is True (bound 4.6e-4 at 36)
        let v = allclose(&[36.0004, 1.0], &[36.0, 1.0], 1e-4, 1e-5).unwrap();
        assert!(v.pass, "{v}");
        assert_eq!((v.max_abs_index, v.max_rel_index, v.failures), (0, 0, 0));
        // numpy.allclose([36.0, 1.0003], [36.0, 1.0], rtol=1e-5, atol=1e-4) is False: the bound at 1 is 1.1e-4
        let v = allclose(&[36.0, 1.0003], &[36.0, 1.0], 1e-4, 1e-5).unwrap();
        assert!(!v.pass && v.first_failure == Some(1) && v.failures == 1, "{v}");
        // relative to a zero expected value: infinite, and only atol applies
        let v = allclose(&[5e-5, 2e-4], &[0.0, 0.0], 1e-4, 1.0).unwrap();
        assert!(v.max_rel.is_infinite() && v.first_failure == Some(1), "{v}");
        assert!(allclose(&[f32::NAN, 0.0], &[0.0, 0.0], f32::INFINITY, 1.0).is_err());
        assert!(allclose(&[0.0], &[f32::INFINITY], 1.0, 1.0).is_err());
        assert!(allclose(&[0.0], &[0.0, 1.0], 1.0, 1.0).is_err());
    }
}
