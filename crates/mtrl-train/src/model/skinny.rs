//! A CPU kernel for the projections of batched decoding: `x · Wᵀ` with a few rows of `x`.
//!
//! At decode time each projection multiplies a handful of rows (one per episode) by a weight
//! matrix that does not fit in cache. The general gemm packs the weight panels first, which at
//! 2–16 rows costs as much as the product itself, and its matrix-vector path (one row) keeps a
//! single core busy. This kernel streams each weight row once and takes its dot product with
//! every row of `x` (held in L1, interleaved by SIMD lane), split over the rayon pool by blocks
//! of weight rows, so that batch-1 decoding reads the weights with every core. SIMD width comes
//! from runtime dispatch (`pulp`: AVX2, AVX-512, NEON or scalar), without `unsafe`.
//!
//! Only the inference path uses it; the differentiable path keeps candle's matmul.

use candle_core::{DType, Device, Tensor};
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use crate::Error;

/// The most rows of `x` this kernel takes; above it the general gemm is efficient.
pub(crate) const MAX_ROWS: usize = 16;
/// The fewest: one row, a matrix-vector product split over every core.
pub(crate) const MIN_ROWS: usize = 1;
/// Weight rows per parallel task: about four tasks per thread, whole tiles
/// ([`TILE_ROWS`]), at least 16 and at most 256 rows.
fn block_rows(n: usize) -> usize {
    let per = n.div_ceil(4 * rayon::current_num_threads().max(1));
    per.next_multiple_of(TILE_ROWS).clamp(16, 256)
}

/// `x [m, k] · wᵀ` for `w [n, k]`, when the kernel applies: f32 on the CPU, `MIN_ROWS ≤ m ≤
/// MAX_ROWS`, and `w` contiguous. `None` otherwise, for the caller to use `matmul`.
pub(crate) fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>, Error> {
    if !matches!(x.device(), Device::Cpu) || x.dtype() != DType::F32 || w.dtype() != DType::F32 {
        return Ok(None);
    }
    let (m, k) = x.dims2()?;
    let (n, kw) = w.dims2()?;
    if !(MIN_ROWS..=MAX_ROWS).contains(&m) || k != kw || k == 0 {
        return Ok(None);
    }
    let x = x.contiguous()?;
    match crate::cpu_storage::with_f32(&[&x, w], |s| product(s[0], s[1], m, n, k)) {
        Some(y) => Ok(Some(Tensor::from_vec(y?, (m, n), x.device())?)),
        None => Ok(None),
    }
}

/// `x [m, k] · wᵀ` for `w [n, k]`, row-major.
fn product(xv: &[f32], wv: &[f32], m: usize, n: usize, k: usize) -> Result<Vec<f32>, Error> {
    if xv.len() != m * k || wv.len() != n * k {
        return Err(Error::Weights(format!(
            "skinny product: {} and {} elements for [{m}, {k}] and [{n}, {k}]",
            xv.len(),
            wv.len()
        )));
    }
    // Each block writes its outputs transposed, `[rows of w][m]`, contiguous per block.
    let mut yt = vec![0f32; n * m];
    let block = block_rows(n);
    yt.par_chunks_mut(block * m)
        .zip(wv.par_chunks(block * k))
        .for_each(|(y, w)| {
            pulp::Arch::new().dispatch(Block { x: xv, w, y, m, k });
        });
    if m == 1 {
        return Ok(yt);
    }
    let mut y = vec![0f32; m * n];
    for (j, col) in yt.chunks_exact(m).enumerate() {
        for (r, v) in col.iter().enumerate() {
            y[r * n + j] = *v;
        }
    }
    Ok(y)
}

/// One block of weight rows against all rows of `x`.
struct Block<'a> {
    x: &'a [f32],
    w: &'a [f32],
    y: &'a mut [f32],
    m: usize,
    k: usize,
}

impl WithSimd for Block<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Block { x, w, y, m, k } = self;
        let lanes = size_of::<S::f32s>() / size_of::<f32>();
        let body = k - k % lanes;
        // Rows of x in groups of 8, 4, 2 and 1, each interleaved once.
        let mut groups = Vec::new();
        let mut r0 = 0;
        while r0 < m {
            let rows = match m - r0 {
                8.. => 8,
                4..=7 => 4,
                2..=3 => 2,
                _ => 1,
            };
            let xr = &x[r0 * k..(r0 + rows) * k];
            groups.push((r0, rows, xr, interleave(xr, rows, k, body, lanes)));
            r0 += rows;
        }
        // Weight rows in tiles that stay in L1 while every group reads them: each weight row
        // comes from memory once, however many groups there are (one group: one tile).
        let n = w.len() / k;
        let tile_rows = if groups.len() == 1 { n } else { TILE_ROWS };
        let mut j0 = 0;
        while j0 < n {
            let here = tile_rows.min(n - j0);
            let tile = &w[j0 * k..(j0 + here) * k];
            for (r0, rows, xr, xi) in &groups {
                let out = Out {
                    y: &mut *y,
                    m,
                    r0: *r0,
                    j0,
                };
                let t = Tile {
                    xi,
                    x: xr,
                    w: tile,
                    k,
                    body,
                };
                // `rows × U` accumulators fit the register file: 32 registers of 16 lanes
                // (AVX-512), 16 of at most 8 (AVX2, NEON).
                match (*rows, lanes >= 16) {
                    (8, true) => rows_kernel::<S, 8, 2>(simd, t, out),
                    (8, false) => rows_kernel::<S, 8, 1>(simd, t, out),
                    (4, true) => rows_kernel::<S, 4, 4>(simd, t, out),
                    (4, false) => rows_kernel::<S, 4, 2>(simd, t, out),
                    (2, _) => rows_kernel::<S, 2, 4>(simd, t, out),
                    _ => one_row_kernel::<S, 4, 2>(simd, t, out),
                }
            }
            j0 += here;
        }
    }
}

/// Weight rows per tile: 8 rows of up to 1,024 columns stay within a 32 KiB L1.
const TILE_ROWS: usize = 8;

/// A group's rows of x and a tile of weight rows.
struct Tile<'a> {
    /// The group's rows, interleaved ([`interleave`]).
    xi: &'a [f32],
    /// The same rows, `[rows, k]`, for the columns past `body`.
    x: &'a [f32],
    /// The weight rows, `[rows, k]`.
    w: &'a [f32],
    k: usize,
    /// The columns the SIMD loop covers (a multiple of the lane count).
    body: usize,
}

/// Where a kernel writes: `y[(j0 + j) * m + r0 + r]` for weight row `j` of its tile and row
/// `r` of its group.
struct Out<'a> {
    y: &'a mut [f32],
    m: usize,
    r0: usize,
    j0: usize,
}

/// `rows` rows of x, `[rows, k]`, interleaved by SIMD chunk: chunk `c` holds lanes
/// `c*L .. (c+1)*L` of row 0, then of row 1, and so on. Only the first `body` columns.
#[inline(always)]
fn interleave(x: &[f32], rows: usize, k: usize, body: usize, lanes: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * body);
    for c in (0..body).step_by(lanes) {
        for r in 0..rows {
            out.extend_from_slice(&x[r * k + c..r * k + c + lanes]);
        }
    }
    out
}

/// `M` rows of x against one weight row at a time, read front to back (one sequential stream,
/// which the hardware prefetcher follows), the loop over `k` unrolled `U` chunks with separate
/// accumulators (`M × U` of them) so that no multiply-add waits on the one before.
#[inline(always)]
fn rows_kernel<S: Simd, const M: usize, const U: usize>(simd: S, t: Tile<'_>, out: Out<'_>) {
    let Tile { xi, x, w, k, body } = t;
    let (xs, _) = S::as_simd_f32s(xi);
    // `chunks_exact(M)` yields slices of exactly M vectors: the conversion cannot fail.
    let chunks: Vec<&[S::f32s; M]> = xs
        .chunks_exact(M)
        .filter_map(|c| <&[S::f32s; M]>::try_from(c).ok())
        .collect();
    let unrolled = chunks.len() - chunks.len() % U;
    for j in 0..w.len() / k {
        let row = &w[j * k..(j + 1) * k];
        let wr = S::as_simd_f32s(&row[..body]).0;
        let mut acc = [[simd.splat_f32s(0.0); M]; U];
        let mut c = 0;
        while c < unrolled {
            for (u, acc) in acc.iter_mut().enumerate() {
                let (xc, wv) = (chunks[c + u], wr[c + u]);
                for r in 0..M {
                    acc[r] = simd.mul_add_e_f32s(xc[r], wv, acc[r]);
                }
            }
            c += U;
        }
        for (xc, wv) in chunks[unrolled..].iter().zip(&wr[unrolled..]) {
            for r in 0..M {
                acc[0][r] = simd.mul_add_e_f32s(xc[r], *wv, acc[0][r]);
            }
        }
        let mut sums = [0f32; M];
        for (r, sum) in sums.iter_mut().enumerate() {
            let mut a = acc[0][r];
            for part in &acc[1..] {
                a = simd.add_f32s(a, part[r]);
            }
            *sum = simd.reduce_sum_f32s(a);
            for c in body..k {
                *sum += x[r * k + c] * row[c];
            }
        }
        let at = (out.j0 + j) * out.m + out.r0;
        out.y[at..at + M].copy_from_slice(&sums);
    }
}

/// One row of x against `R` weight rows at a time: `R` sequential streams per core instead of
/// one, so that more of the memory system's bandwidth is in flight (batch-1 decoding reads
/// every weight once per token and waits on nothing else); `R × U` accumulators. The rows
/// that do not fill a group of `R` go through [`rows_kernel`].
#[inline(always)]
fn one_row_kernel<S: Simd, const R: usize, const U: usize>(simd: S, t: Tile<'_>, out: Out<'_>) {
    let Tile { xi, x, w, k, body } = t;
    let (xs, _) = S::as_simd_f32s(xi);
    let chunks = xs.len();
    let unrolled = chunks - chunks % U;
    let n = w.len() / k;
    let grouped = n - n % R;
    for j0 in (0..grouped).step_by(R) {
        let rows: [&[f32]; R] = std::array::from_fn(|i| &w[(j0 + i) * k..(j0 + i + 1) * k]);
        let wr: [&[S::f32s]; R] = std::array::from_fn(|i| S::as_simd_f32s(&rows[i][..body]).0);
        let mut acc = [[simd.splat_f32s(0.0); U]; R];
        let mut c = 0;
        while c < unrolled {
            for u in 0..U {
                let xc = xs[c + u];
                for i in 0..R {
                    acc[i][u] = simd.mul_add_e_f32s(xc, wr[i][c + u], acc[i][u]);
                }
            }
            c += U;
        }
        for c in unrolled..chunks {
            for i in 0..R {
                acc[i][0] = simd.mul_add_e_f32s(xs[c], wr[i][c], acc[i][0]);
            }
        }
        for i in 0..R {
            let mut a = acc[i][0];
            for part in &acc[i][1..] {
                a = simd.add_f32s(a, *part);
            }
            let mut sum = simd.reduce_sum_f32s(a);
            for c in body..k {
                sum += x[c] * rows[i][c];
            }
            out.y[(out.j0 + j0 + i) * out.m + out.r0] = sum;
        }
    }
    if grouped < n {
        let rest = Tile {
            xi,
            x,
            w: &w[grouped * k..],
            k,
            body,
        };
        let out = Out {
            j0: out.j0 + grouped,
            ..out
        };
        rows_kernel::<S, 1, 8>(simd, rest, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(m: usize, k: usize, n: usize) {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        let got = matmul_t(&x, &w).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap();
        let Some(got) = got else {
            assert!(
                !(MIN_ROWS..=MAX_ROWS).contains(&m),
                "m={m} should use the kernel"
            );
            return;
        };
        let diff = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-3 * (k as f32).sqrt(), "m={m} k={k} n={n}: {diff}");
    }

    #[test]
    fn agrees_with_matmul_for_every_row_count_and_ragged_shapes() {
        for m in 1..=MAX_ROWS + 1 {
            check(m, 64, 130);
        }
        // k not a multiple of any SIMD width, n not a multiple of the block or of R.
        for (k, n) in [(37, 3), (576, 193), (100, 1), (16, 65)] {
            for m in [1, 2, 3, 5, 8, 13] {
                check(m, k, n);
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_handle() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((4, 8), DType::F64, &dev).unwrap();
        let w = Tensor::zeros((3, 8), DType::F64, &dev).unwrap();
        assert!(matmul_t(&x, &w).unwrap().is_none());
        let x = Tensor::zeros((4, 8), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((8, 3), DType::F32, &dev)
            .unwrap()
            .t()
            .unwrap();
        assert!(matmul_t(&x, &w).unwrap().is_none(), "non-contiguous w");
        let w = Tensor::zeros((3, 9), DType::F32, &dev).unwrap();
        assert!(matmul_t(&x, &w).unwrap().is_none(), "k differs");
        let x = Tensor::zeros((MAX_ROWS + 1, 8), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((3, 8), DType::F32, &dev).unwrap();
        assert!(matmul_t(&x, &w).unwrap().is_none(), "too many rows");
    }
}
