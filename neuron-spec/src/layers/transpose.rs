//! A tiled 2-D transpose for the load path: HF stores a linear weight as [out, in], burn as [in, out].

use crate::error::{Error, Result};

/// Side of the square tiles. 32 f32 values are two cache lines: a tile's reads and writes both stay in
/// cache, where a naive loop walks the destination with a stride of `rows` elements on every write.
const TILE: usize = 32;

/// Transposes a row-major `[rows, cols]` matrix into a row-major `[cols, rows]` one, tile by tile.
pub fn transpose_2d<T: Copy + Default>(src: &[T], rows: usize, cols: usize) -> Result<Vec<T>> {
    let n = rows.checked_mul(cols).ok_or_else(|| Error::Tensor(format!("transpose: [{rows}, {cols}] overflows")))?;
    if src.len() != n {
        return Err(Error::Tensor(format!(
            "transpose: a [{rows}, {cols}] matrix needs {n} elements, got {}",
            src.len()
        )));
    }
    let mut dst = vec![T::default(); n];
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            let c1 = (c0 + TILE).min(cols);
            for r in r0..r1 {
                let row = &src[r * cols..r * cols + cols];
                for c in c0..c1 {
                    dst[c * rows + r] = row[c];
                }
            }
        }
    }
    Ok(dst)
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
        for (rows, cols) in [(0, 0), (1, 1), (1, 70), (70, 1), (31, 33), (64, 96), (65, 129), (100, 3)] {
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
