//! A tiled 2-D transpose for the load path: HF stores a linear weight as [out, in], burn as [in, out].

use crate::error::{Error, Result};

/// Side of the square tiles. 32 f32 values are two cache lines: a tile's reads and writes both stay in
/// cache, where a naive loop walks the destination with a stride of `rows` elements on every write.
const TILE: usize = 32;

/// Matrices with at least this many elements are transposed on every core (a band of destination rows each).
const PARALLEL_MIN: usize = 1 << 20;

/// Transposes a row-major `[rows, cols]` matrix into a row-major `[cols, rows]` one, tile by tile; large ones
/// on every core.
pub fn transpose_2d<T: Copy + Default + Send + Sync>(src: &[T], rows: usize, cols: usize) -> Result<Vec<T>> {
    let n = rows.checked_mul(cols).ok_or_else(|| Error::Tensor(format!("transpose: [{rows}, {cols}] overflows")))?;
    if src.len() != n {
        return Err(Error::Tensor(format!(
            "transpose: a [{rows}, {cols}] matrix needs {n} elements, got {}",
            src.len()
        )));
    }
    let mut dst = vec![T::default(); n];
    if n == 0 {
        return Ok(dst);
    }
    let threads = if n >= PARALLEL_MIN { std::thread::available_parallelism().map_or(1, |t| t.get()) } else { 1 };
    // Destination rows (source columns) per band, whole tiles.
    let band = cols.div_ceil(threads).div_ceil(TILE) * TILE;
    if threads == 1 || band >= cols {
        transpose_band(src, rows, cols, 0, &mut dst);
        return Ok(dst);
    }
    std::thread::scope(|s| {
        for (i, out) in dst.chunks_mut(band * rows).enumerate() {
            s.spawn(move || transpose_band(src, rows, cols, i * band, out));
        }
    });
    Ok(dst)
}

/// Destination rows `c0..c0 + out.len() / rows` of the transpose of `src` (`[rows, cols]`) into `out`.
fn transpose_band<T: Copy>(src: &[T], rows: usize, cols: usize, c0: usize, out: &mut [T]) {
    let c_end = c0 + out.len() / rows;
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for t0 in (c0..c_end).step_by(TILE) {
            let t1 = (t0 + TILE).min(c_end);
            for r in r0..r1 {
                let row = &src[r * cols..r * cols + cols];
                for c in t0..t1 {
                    out[(c - c0) * rows + r] = row[c];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(src: &[u32], rows: usize, cols: usize) -> Vec<u32> {
        let mut d = vec![0; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                d[c * rows + r] = src[r * cols + c];
            }
        }
        d
    }

    #[test]
    fn matches_the_naive_transpose_on_ragged_tiles() {
        // The last two are above PARALLEL_MIN: banded over the cores.
        for (rows, cols) in
            [(0, 0), (1, 1), (1, 70), (70, 1), (31, 33), (64, 96), (65, 129), (100, 3), (1031, 1025), (3, 400_000)]
        {
            let src: Vec<u32> = (0..(rows * cols) as u32).collect();
            let t = transpose_2d(&src, rows, cols).unwrap();
            assert_eq!(t, naive(&src, rows, cols), "[{rows}, {cols}]");
            // Transposing twice is the identity.
            assert_eq!(transpose_2d(&t, cols, rows).unwrap(), src);
        }
    }

    #[test]
    fn element_mapping_is_out_in_to_in_out() {
        // [out=2, in=3] → [in=3, out=2]: element (o, i) lands at (i, o).
        let w = [1, 2, 3, 4, 5, 6];
        assert_eq!(transpose_2d(&w, 2, 3).unwrap(), vec![1, 4, 2, 5, 3, 6]);
    }

    #[test]
    fn wrong_length_is_an_error() {
        assert!(transpose_2d(&[1u8, 2, 3], 2, 2).is_err());
    }
}
