// The CUDA kernels of the hsu ops and their host launchers, free of torch (docs/spec.md §4-§6).
//
// csrc/cuda/hsu_cuda.cu binds them to torch.ops.hsu.*; csrc/tests/cuda_compile_check.cu instantiates the
// same launchers without torch (the CMake compile check). Per-pair math comes from csrc/hsu_pair.h, the
// header the CPU kernel uses, so each phi/phi' has one definition for host and device.
//
// One pass computes, for every row i of X against every row j of Y (the same matrix for a self energy,
// the diagonal pair skipped), the row sums of the pair energies e_i, of the gradient coefficients
// a_i = sum_j c_ij y_j, and (un-normalized only) b_i = sum_j ci_ij. Each thread owns one row i; the
// columns stream through shared memory in tiles that every thread of the block reads (broadcast loads).
// Nothing of size N x N exists: a tile of columns is consumed the moment it is loaded.
//
// Two engines, chosen by D:
//  * small (D <= 32 float, <= 16 double): the row x_i and its accumulator a_i live in registers, padded to a
//    compile-time width DP in {4, 16, 32} with zeros (zero coordinates change no dot product, so no
//    predicates in the inner loop). The kind is a template parameter: phi is inlined without a switch.
//  * general (any D): coordinates go through shared memory in chunks of 32, 32 columns per tile; the dot
//    products of a tile are kept in registers, their coefficients in shared memory, and a_i is accumulated
//    in the (per-split) partial buffer in global memory. The kind is dispatched at run time (this engine
//    serves large D, where the products, not phi, dominate; Triton is the fast path there).
//
// Occupancy at small N: the columns can be split into `splits` ranges (grid.y), each writing its own
// partial row sums. The finish kernel adds the partials in split order and the energies are reduced by one
// block per batch entry in a fixed tree order: no atomics anywhere, results are bitwise reproducible for a
// given device (the split count depends on the number of SMs).
//
// Arithmetic is exact IEEE fp32/fp64 (no fast-math intrinsics, no tensor cores). The energy of a row is
// summed in T within a column tile and in double across tiles. Indices are int64.
//
// Numerics (README "Precision", csrc/hsu_pair.h): the passes multiply rows normalized once in double by
// row_prep_kernel (u = w r, scale-safe), so a cosine needs no row statistics. A pair the fast path flags
// (close to +-1, or a term not finite in T) is recomputed by its thread on the careful path, in double from
// the rows as given: that branch diverges only where such pairs are. The Gaussian kind keeps a running
// maximum per row (and per split), rescaling its sums when it grows (online log-sum-exp); the splits and the
// rows are combined in the finish and reduce kernels, and the gradient rows are scaled by exp(m_i - log Z)
// in lse_epilogue_kernel once log Z is known.
//
// HSU_CUDA_EMULATE: csrc/tests/test_cuda_emulated.cpp compiles the kernels as plain C++ (one host thread
// per CUDA thread, a barrier for __syncthreads) to check their indexing without a GPU; it then supplies
// the CUDA keywords itself and the launchers below are left out.
#pragma once

#ifndef HSU_CUDA_EMULATE
#include <cuda_runtime.h>
#endif

#include <cstdint>

#include "../hsu_pair.h"
#include "hsu_cuda_grid.h"

namespace hsu {
namespace cuda {

constexpr int kBlock = 128;      // threads per block; each owns one row
constexpr int kSmallTile = 128;  // columns per tile (small engine): one loaded by each thread
constexpr int kGenTile = 32;     // columns per tile (general engine): dot products held in registers
constexpr int kGenChunk = 32;    // coordinates per shared-memory chunk (general engine)
constexpr int kMaxSplits = 64;
constexpr int kReduceThreads = 256;
static_assert(kBlock == kSmallTile, "the small engine loads one column per thread");

// One pass: rows of X[b] against rows of Y[b] for every batch entry b.
template <typename T>
struct PassArgs {
  const T* x;   // [B, n1, D], contiguous: the rows the products use (u normalized, w otherwise)
  const T* y;   // [B, n2, D]
  const T* wx;  // [B, n1, D] rows as given (the careful path's coordinates)
  const T* wy;  // [B, n2, D]
  const double* sx;  // [B, n1] normalized: r = 1/sqrt(|w|^2 + eps); un-normalized: |w|^2
  const double* ax;  // [B, n1] normalized: a = eps r^2 (null otherwise)
  const double* sy;  // [B, n2]
  const double* ay;  // [B, n2]
  const T* qx;  // [B, n1] un-normalized: |w|^2 in T (null normalized)
  const T* qy;  // [B, n2]
  int64_t B, n1, n2, D;
  bool self;    // X is Y: skip the pair (i, i)
  Params<T> p;
  Params<double> pd;
  T cs;             // the per-pair share of the output scale (coef_scale); 1 for the Gaussian kind
  int splits;       // column ranges, each writing its own partial sums
  double* part_e;   // [splits, B, n1] energies (Gaussian: sums of exp(x - m) relative to part_m)
  T* part_a;        // [splits, B, n1, D]
  double* part_r;   // [splits, B, n1] radial coefficients (normalized) / sum_j ci (un-normalized)
  double* part_m;   // [splits, B, n1] the Gaussian kind's running maximum (null otherwise)
};

// ---------------------------------------------------------------------------------------------------------
// Per-pair dispatch: kind fixed at compile time, half-space / normalize / exponent mode uniform run-time
// branches (the same for every thread of the launch, so they never diverge).

template <int64_t KIND, bool HS, bool NORM, int MODE, typename T>
__device__ __forceinline__ bool pair_k(const PassArgs<T>& a, T v, T qi, T qj, T& e, T& cj, T& ci) {
  if constexpr (NORM) {
    ci = T(0);
    return pair_norm<KIND, HS, MODE>(a.p.s, a.p.t, a.p.eps_ang, a.cs, v, e, cj);
  } else {
    return pair_raw<KIND, HS, MODE>(a.p.s, a.p.t, a.cs, v, qi, qj, e, cj, ci);
  }
}

template <int64_t KIND, bool HS, bool NORM, typename T>
__device__ __forceinline__ bool pair_mode(const PassArgs<T>& a, int mode, T v, T qi, T qj, T& e, T& cj, T& ci) {
  if constexpr (KindTraits<KIND>::power) {
    switch (mode) {  // the exponent mode (PowMode), not the kind: any other mode is the general one
      case kPowRsqrt: return pair_k<KIND, HS, NORM, kPowRsqrt>(a, v, qi, qj, e, cj, ci);
      case kPowRecip: return pair_k<KIND, HS, NORM, kPowRecip>(a, v, qi, qj, e, cj, ci);
      case kPowRecip2: return pair_k<KIND, HS, NORM, kPowRecip2>(a, v, qi, qj, e, cj, ci);
      default: return pair_k<KIND, HS, NORM, kPowGeneral>(a, v, qi, qj, e, cj, ci);
    }
  } else {
    return pair_k<KIND, HS, NORM, kPowGeneral>(a, v, qi, qj, e, cj, ci);
  }
}

template <int64_t KIND, typename T>
__device__ __forceinline__ bool pair_dev(const PassArgs<T>& a, int mode, T v, T qi, T qj, T& e, T& cj, T& ci) {
  // Angle kinds exist only normalized (checked before launch); no un-normalized code is generated for them.
  if constexpr (KindTraits<KIND>::angle) {
    if (a.p.half_space) return pair_mode<KIND, true, true>(a, mode, v, qi, qj, e, cj, ci);
    return pair_mode<KIND, false, true>(a, mode, v, qi, qj, e, cj, ci);
  } else {
    if (a.p.normalize) {
      if (a.p.half_space) return pair_mode<KIND, true, true>(a, mode, v, qi, qj, e, cj, ci);
      return pair_mode<KIND, false, true>(a, mode, v, qi, qj, e, cj, ci);
    }
    if (a.p.half_space) return pair_mode<KIND, true, false>(a, mode, v, qi, qj, e, cj, ci);
    return pair_mode<KIND, false, false>(a, mode, v, qi, qj, e, cj, ci);
  }
}

// Exponent mode of x^(-p), p = power_scale * s (Riesz: s/2 of d2^(-s/2); angular: s); the general mode for the
// kinds without an exponent. An unknown kind raises.
template <typename T>
inline int exponent_mode(const Params<T>& p) {
  const KindInfo k = kind_info(p.kind);
  return k.power ? pow_mode(static_cast<T>(k.power_scale) * p.s) : kPowGeneral;
}

// Tiles [t0, t1) of the column range that split `split` owns (whole tiles, as even as possible).
__device__ __forceinline__ void split_tiles(int64_t n2, int tile, int split, int splits, int64_t& t0, int64_t& t1) {
  const int64_t ntiles = (n2 + tile - 1) / tile;
  t0 = ntiles * split / splits;
  t1 = ntiles * (split + 1) / splits;
}

// The careful path of pair (i, j) for the thread of row i: its geometry from the rows as given.
template <typename T>
__device__ __forceinline__ CarefulGeom careful_geom_dev(const PassArgs<T>& a, int64_t bb, int64_t i, int64_t j) {
  const int64_t D = a.D;
  const int64_t ri = bb * a.n1 + i, rj = bb * a.n2 + j;
  if (a.p.normalize) return careful_geom<true>(a.wx + ri * D, a.wy + rj * D, D, a.sx[ri], a.sy[rj], a.ax[ri], a.ay[rj]);
  return careful_geom<false>(a.wx + ri * D, a.wy + rj * D, D, 1.0, 1.0, 0.0, 0.0);
}

// Adds a careful pair's gradient terms to row i's accumulator held in registers (width DP, D <= DP).
template <int DP, typename T>
__device__ __forceinline__ void careful_apply_regs(const PassArgs<T>& a, const CarefulCoef& k, double sign, int64_t bb,
                                                   int64_t i, int64_t j, T* acc, double& rad) {
  const int64_t D = a.D;
  const T* wi = a.wx + (bb * a.n1 + i) * D;
  const T* wj = a.wy + (bb * a.n2 + j) * D;
  if (a.p.normalize) {  // as careful_apply<true> (csrc/hsu_pair.h)
    const RowSplit si = split_r(a.sx[bb * a.n1 + i]), sj = split_r(a.sy[bb * a.n2 + j]);
    const double dt = sj.t - si.t, ks = k.k1 * sign;
#pragma unroll
    for (int d = 0; d < DP; ++d)
      if (d < D) {
        const double xi = static_cast<double>(wi[d]) * si.scale, xj = sign * static_cast<double>(wj[d]) * sj.scale;
        acc[d] += static_cast<T>(ks * ((mul_rn(si.t, xj - xi) + mul_rn(xj, dt)) / k.q));
      }
    rad += ks * (a.ax[bb * a.n1 + i] / k.q);
  } else {
#pragma unroll
    for (int d = 0; d < DP; ++d)
      if (d < D) {
        const double xi = static_cast<double>(wi[d]), xj = static_cast<double>(wj[d]);
        acc[d] += static_cast<T>(k.k1 * (xi - xj) + k.k2 * (xi + xj));
      }
  }
}

// As careful_apply_regs, to an accumulator row in memory (the general engine's partial row).
template <typename T>
__device__ __forceinline__ void careful_apply_rt(const PassArgs<T>& a, const CarefulCoef& k, double sign, int64_t bb,
                                                 int64_t i, int64_t j, T* acc, double& rad) {
  const int64_t D = a.D;
  const T* wi = a.wx + (bb * a.n1 + i) * D;
  const T* wj = a.wy + (bb * a.n2 + j) * D;
  double unused = 0.0;
  if (a.p.normalize)
    careful_apply<true>(k, sign, wi, wj, D, a.sx[bb * a.n1 + i], a.sy[bb * a.n2 + j], a.ax[bb * a.n1 + i],
                        a.ay[bb * a.n2 + j], acc, static_cast<T*>(nullptr), rad, unused);
  else
    careful_apply<false>(k, sign, wi, wj, D, 1.0, 1.0, 0.0, 0.0, acc, static_cast<T*>(nullptr), unused, unused);
}

// ---------------------------------------------------------------------------------------------------------
// Small-D engine.

template <typename T, int64_t KIND, int DP>
__global__ void __launch_bounds__(kBlock) pair_pass_small(const PassArgs<T> a, const int mode) {
  constexpr bool LSE = KindTraits<KIND>::logsum;
  __shared__ __align__(16) T ys[kSmallTile][DP];
  __shared__ T sqy[kSmallTile];
  const int tid = threadIdx.x;
  const int64_t nrb = (a.n1 + kBlock - 1) / kBlock;
  const int64_t bb = static_cast<int64_t>(blockIdx.x) / nrb;
  const int64_t i = (static_cast<int64_t>(blockIdx.x) % nrb) * kBlock + tid;
  const int split = blockIdx.y;
  const bool row_ok = i < a.n1;
  const int64_t D = a.D;
  const T* xb = a.x + bb * a.n1 * D;
  const T* yb = a.y + bb * a.n2 * D;
  const bool norm = a.p.normalize;

  T xi[DP], acc[DP];
#pragma unroll
  for (int d = 0; d < DP; ++d) {
    xi[d] = (row_ok && d < D) ? xb[i * D + d] : T(0);
    acc[d] = T(0);
  }
  const T qi = (row_ok && !norm) ? a.qx[bb * a.n1 + i] : T(0);
  double erow = 0.0, rad = 0.0;
  T shift = -static_cast<T>(INFINITY);  // the Gaussian kind's running maximum

  int64_t t0, t1;
  split_tiles(a.n2, kSmallTile, split, a.splits, t0, t1);
  for (int64_t tile = t0; tile < t1; ++tile) {
    const int64_t j0 = tile * kSmallTile;
    const int m = static_cast<int>(a.n2 - j0 < kSmallTile ? a.n2 - j0 : kSmallTile);
    __syncthreads();  // the previous tile is consumed
    {
      const int64_t j = j0 + tid;
      const bool col_ok = tid < m;
#pragma unroll
      for (int d = 0; d < DP; ++d) ys[tid][d] = (col_ok && d < D) ? yb[j * D + d] : T(0);
      sqy[tid] = (col_ok && !norm) ? a.qy[bb * a.n2 + j] : T(0);
    }
    __syncthreads();
    if (!row_ok) continue;
    // The diagonal pair is selected away, never subtracted: its terms are infinite when eps_norm = 0.
    const int skip = (a.self && i >= j0 && i < j0 + m) ? static_cast<int>(i - j0) : -1;
    T esum = T(0);
#pragma unroll 2
    for (int jj = 0; jj < m; ++jj) {
      T yv[DP];
#pragma unroll
      for (int d = 0; d < DP; ++d) yv[d] = ys[jj][d];
      T dot = T(0);
#pragma unroll
      for (int d = 0; d < DP; ++d) dot += xi[d] * yv[d];
      if (jj == skip) continue;
      T c, ci;
      if constexpr (LSE) {
        T x1, x2;
        const bool care = gauss_logs_rt(a.p, dot, qi, sqy[jj], x1, x2);
        CarefulGeom q{0.0, 0.0, 1.0};
        if (care) {
          q = careful_geom_dev(a, bb, i, j0 + jj);
          double l1, l2;
          if (norm) a.p.half_space ? careful_logs<true, true>(a.pd.t, q, l1, l2) : careful_logs<false, true>(a.pd.t, q, l1, l2);
          else a.p.half_space ? careful_logs<true, false>(a.pd.t, q, l1, l2) : careful_logs<false, false>(a.pd.t, q, l1, l2);
          x1 = static_cast<T>(l1);
          x2 = static_cast<T>(l2);
        }
        const T top = hsu_max(x1, x2);
        if (top > shift) {  // rescale what the row has so far to the new maximum
          if (shift > -static_cast<T>(INFINITY)) {
            const T f = hsu_exp(shift - top);
            erow *= static_cast<double>(f);
            rad *= static_cast<double>(f);
#pragma unroll
            for (int d = 0; d < DP; ++d) acc[d] *= f;
          }
          shift = top;
        }
        const T ref = shift > -static_cast<T>(INFINITY) ? shift : T(0);
        const T w1 = hsu_exp(x1 - ref), w2 = hsu_exp(x2 - ref);
        erow += static_cast<double>(w1 + w2);
        if (care) {
          careful_apply_regs<DP>(a, norm ? careful_gauss_coef<true>(a.pd.t, w1, w2)
                                         : careful_gauss_coef<false>(a.pd.t, w1, w2), q.sign, bb, i, j0 + jj, acc, rad);
          continue;
        }
        if (norm) gauss_coef<true>(a.p.t, w1, w2, c, ci);
        else gauss_coef<false>(a.p.t, w1, w2, c, ci);
      } else {
        T e;
        const bool care = pair_dev<KIND>(a, mode, dot, qi, sqy[jj], e, c, ci);
        if (care) {
          const CarefulGeom q = careful_geom_dev(a, bb, i, j0 + jj);
          double ep;
          const CarefulCoef k = careful_terms_flags<KIND>(a.pd, static_cast<double>(a.cs), q, ep);
          erow += ep;
          careful_apply_regs<DP>(a, k, q.sign, bb, i, j0 + jj, acc, rad);
          continue;
        }
        esum += e;
      }
      rad += static_cast<double>(ci);
#pragma unroll
      for (int d = 0; d < DP; ++d) acc[d] += c * yv[d];
    }
    erow += static_cast<double>(esum);
  }

  if (!row_ok) return;
  const int64_t r = (static_cast<int64_t>(split) * a.B + bb) * a.n1 + i;
  a.part_e[r] = erow;
  a.part_r[r] = rad;
  if (a.part_m) a.part_m[r] = static_cast<double>(shift);
  T* out = a.part_a + r * D;
#pragma unroll
  for (int d = 0; d < DP; ++d)
    if (d < D) out[d] = acc[d];
}

// ---------------------------------------------------------------------------------------------------------
// General engine (any D).

template <typename T>
__global__ void __launch_bounds__(kBlock) pair_pass_general(const PassArgs<T> a) {
  // buf holds the block's X chunk while the dot products are formed, then the pair coefficients.
  __shared__ T buf[kBlock][kGenChunk + 1];
  __shared__ T ys[kGenTile][kGenChunk + 1];
  __shared__ T sqy[kGenTile];
  const int tid = threadIdx.x;
  const int64_t nrb = (a.n1 + kBlock - 1) / kBlock;
  const int64_t bb = static_cast<int64_t>(blockIdx.x) / nrb;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) % nrb) * kBlock;
  const int64_t i = row0 + tid;
  const int split = blockIdx.y;
  const bool row_ok = i < a.n1;
  const int64_t D = a.D;
  const T* xb = a.x + bb * a.n1 * D;
  const T* yb = a.y + bb * a.n2 * D;
  const bool norm = a.p.normalize, lse = kind_info(a.p.kind).logsum;
  const T qi = (row_ok && !norm) ? a.qx[bb * a.n1 + i] : T(0);
  const int64_t r = (static_cast<int64_t>(split) * a.B + bb) * a.n1 + i;
  T* arow = a.part_a + r * D;
  if (row_ok)
    for (int64_t d = 0; d < D; ++d) arow[d] = T(0);
  const bool one_chunk = D <= kGenChunk;  // the Y chunk of the dot products is still in ys for the update
  double erow = 0.0, rad = 0.0;
  T shift = -static_cast<T>(INFINITY);

  int64_t t0, t1;
  split_tiles(a.n2, kGenTile, split, a.splits, t0, t1);
  for (int64_t tile = t0; tile < t1; ++tile) {
    const int64_t j0 = tile * kGenTile;
    const int m = static_cast<int>(a.n2 - j0 < kGenTile ? a.n2 - j0 : kGenTile);
    T dot[kGenTile];
#pragma unroll
    for (int jj = 0; jj < kGenTile; ++jj) dot[jj] = T(0);
    for (int64_t dc = 0; dc < D; dc += kGenChunk) {
      __syncthreads();
      for (int e = tid; e < kBlock * kGenChunk; e += kBlock) {
        const int rr = e / kGenChunk, cc = e % kGenChunk;
        const int64_t row = row0 + rr;
        buf[rr][cc] = (row < a.n1 && dc + cc < D) ? xb[row * D + dc + cc] : T(0);
      }
      for (int e = tid; e < kGenTile * kGenChunk; e += kBlock) {
        const int rr = e / kGenChunk, cc = e % kGenChunk;
        ys[rr][cc] = (rr < m && dc + cc < D) ? yb[(j0 + rr) * D + dc + cc] : T(0);
      }
      if (tid < kGenTile) sqy[tid] = (tid < m && !norm) ? a.qy[bb * a.n2 + j0 + tid] : T(0);
      __syncthreads();
#pragma unroll 4
      for (int cc = 0; cc < kGenChunk; ++cc) {
        const T xv = buf[tid][cc];
#pragma unroll
        for (int jj = 0; jj < kGenTile; ++jj) dot[jj] += xv * ys[jj][cc];
      }
    }
    __syncthreads();  // every thread is done with the X chunk in buf
#pragma unroll
    for (int jj = 0; jj < kGenTile; ++jj) buf[tid][jj] = dot[jj];
    const int skip = (a.self && i >= j0 && i < j0 + kGenTile) ? static_cast<int>(i - j0) : -1;
    // the row's own entries of buf, no synchronization needed; careful pairs are added to arow directly
    // (the careful path is only taken by a valid row: a padded row's thread has no row to write)
    if (lse) {
      // the tile's log terms, its maximum, the rescale of the row's sums, then the weights
      T top = -static_cast<T>(INFINITY);
      uint32_t care_bits = 0;
      T x2s[kGenTile];
      for (int jj = 0; jj < m; ++jj) {
        T x1, x2;
        bool care = gauss_logs_rt(a.p, buf[tid][jj], qi, sqy[jj], x1, x2);
        if (jj == skip) {
          x1 = x2 = -static_cast<T>(INFINITY);
          care = false;
        } else if (care && row_ok) {
          const CarefulGeom q = careful_geom_dev(a, bb, i, j0 + jj);
          double l1, l2;
          if (norm) a.p.half_space ? careful_logs<true, true>(a.pd.t, q, l1, l2) : careful_logs<false, true>(a.pd.t, q, l1, l2);
          else a.p.half_space ? careful_logs<true, false>(a.pd.t, q, l1, l2) : careful_logs<false, false>(a.pd.t, q, l1, l2);
          x1 = static_cast<T>(l1);
          x2 = static_cast<T>(l2);
          care_bits |= 1u << jj;
        }
        buf[tid][jj] = x1;
        x2s[jj] = x2;
        top = hsu_max(top, hsu_max(x1, x2));
      }
      if (row_ok && top > shift) {
        if (shift > -static_cast<T>(INFINITY)) {
          const T f = hsu_exp(shift - top);
          erow *= static_cast<double>(f);
          rad *= static_cast<double>(f);
          for (int64_t d = 0; d < D; ++d) arow[d] *= f;
        }
        shift = top;
      }
      const T ref = shift > -static_cast<T>(INFINITY) ? shift : T(0);
      for (int jj = 0; jj < m; ++jj) {
        const T w1 = hsu_exp(buf[tid][jj] - ref), w2 = hsu_exp(x2s[jj] - ref);
        erow += static_cast<double>(w1 + w2);
        T c, ci;
        if (norm) gauss_coef<true>(a.p.t, w1, w2, c, ci);
        else gauss_coef<false>(a.p.t, w1, w2, c, ci);
        if (care_bits >> jj & 1u) {
          const CarefulGeom q = careful_geom_dev(a, bb, i, j0 + jj);
          careful_apply_rt(a, norm ? careful_gauss_coef<true>(a.pd.t, w1, w2) : careful_gauss_coef<false>(a.pd.t, w1, w2),
                           q.sign, bb, i, j0 + jj, arow, rad);
          c = ci = T(0);
        }
        rad += static_cast<double>(ci);
        buf[tid][jj] = c;
      }
    } else {
      T esum = T(0);
      for (int jj = 0; jj < m; ++jj) {
        T e, c, ci;
        const bool care = pair_rt(a.p, a.cs, buf[tid][jj], qi, sqy[jj], e, c, ci);
        const bool keep = jj != skip;
        if (keep && care && row_ok) {
          const CarefulGeom q = careful_geom_dev(a, bb, i, j0 + jj);
          double ep;
          const CarefulCoef k = careful_terms_rt(a.pd, static_cast<double>(a.cs), q, ep);
          erow += ep;
          careful_apply_rt(a, k, q.sign, bb, i, j0 + jj, arow, rad);
        }
        const bool use = keep && !care;
        esum += use ? e : T(0);
        rad += static_cast<double>(use ? ci : T(0));
        buf[tid][jj] = use ? c : T(0);
      }
      erow += static_cast<double>(esum);
    }
    for (int jj = m; jj < kGenTile; ++jj) buf[tid][jj] = T(0);
    T c[kGenTile];
#pragma unroll
    for (int jj = 0; jj < kGenTile; ++jj) c[jj] = buf[tid][jj];
    for (int64_t dc = 0; dc < D; dc += kGenChunk) {
      if (!one_chunk) {
        __syncthreads();
        for (int e = tid; e < kGenTile * kGenChunk; e += kBlock) {
          const int rr = e / kGenChunk, cc = e % kGenChunk;
          ys[rr][cc] = (rr < m && dc + cc < D) ? yb[(j0 + rr) * D + dc + cc] : T(0);
        }
        __syncthreads();
      }
      const int w = static_cast<int>(D - dc < kGenChunk ? D - dc : kGenChunk);
      for (int cc = 0; cc < w; ++cc) {
        T s = T(0);
#pragma unroll
        for (int jj = 0; jj < kGenTile; ++jj) s += c[jj] * ys[jj][cc];
        if (row_ok) arow[dc + cc] += s;
      }
    }
  }
  if (!row_ok) return;
  a.part_e[r] = erow;
  a.part_r[r] = rad;
  if (a.part_m) a.part_m[r] = static_cast<double>(shift);
}

// ---------------------------------------------------------------------------------------------------------
// Row preparation, row epilogue, energy reduction.

// Per row: the double statistics (normalized: r and a, scale-safe, csrc/hsu_pair.h row_norm; otherwise
// |w|^2) and the rows the passes multiply (u = w r in T normalized; |w|^2 in T otherwise).
template <typename T>
__global__ void row_prep_kernel(const T* x, int64_t rows, int64_t D, bool normalize, double eps_norm, double* st,
                                double* sa, T* z, T* qt) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const T* xr = x + r * D;
  if (normalize) {
    double rr, aa;
    row_norm(xr, D, eps_norm, rr, aa);
    st[r] = rr;
    sa[r] = aa;
    for (int64_t d = 0; d < D; ++d) z[r * D + d] = static_cast<T>(static_cast<double>(xr[d]) * rr);
  } else {
    st[r] = row_sq(xr, D);
    qt[r] = static_cast<T>(st[r]);
  }
}

template <typename T>
struct FinishArgs {
  const T* x;  // [rows, D] rows as given
  const double* st;  // row statistics (r, or |w|^2)
  const double* sa;  // a (normalized)
  int64_t rows, D;
  int splits;
  const double* part_e;
  const T* part_a;
  const double* part_r;
  const double* part_m;  // Gaussian kind: the splits' maxima (null otherwise)
  Params<double> pd;
  double gs;         // non-Gaussian: grad_scale times the epilogue's share of the output scale
  double kscale;     // non-Gaussian: the output scale of the half-space self term
  double pair_scale;
  bool with_diag;    // half-space self energy: the pair (w_i, -w_i)
  T* grad;           // [rows, D] dE/dw (Gaussian kind: the combined accumulators until lse_epilogue_kernel)
  double* e_row;     // [rows] pair energy sums of the row (Gaussian kind: its log term m + log(ps s))
  double* e_diag;    // [rows] half-space self terms (Gaussian kind: their log terms; -inf without)
  double* m_row;     // [rows] Gaussian kind: the row's maximum (null otherwise)
  double* r_row;     // [rows] Gaussian kind: the row's combined radial coefficient
  double* k_row;     // [rows] Gaussian kind: the self term's gradient coefficient
};

// Adds the split partials in split order (the Gaussian kind: after moving each to the splits' common
// maximum), then applies the header's row epilogue (row_grad, diag_term), or for the Gaussian kind keeps
// what lse_epilogue_kernel needs.
template <typename T>
__global__ void finish_rows_kernel(const FinishArgs<T> f) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= f.rows) return;
  const int64_t D = f.D;
  const bool lse = f.part_m != nullptr;
  double top = -static_cast<double>(INFINITY);
  for (int sp = 0; lse && sp < f.splits; ++sp) top = hsu_max(top, f.part_m[sp * f.rows + r]);
  auto weight = [&](int sp) {
    if (!lse) return 1.0;
    const double m = f.part_m[sp * f.rows + r];
    return m > -static_cast<double>(INFINITY) ? exp(m - top) : 0.0;
  };
  T* g = f.grad + r * D;
  for (int64_t d = 0; d < D; ++d) {
    double s = 0.0;
    for (int sp = 0; sp < f.splits; ++sp) s += weight(sp) * static_cast<double>(f.part_a[(sp * f.rows + r) * D + d]);
    g[d] = static_cast<T>(s);
  }
  double e = 0.0, rad = 0.0;
  for (int sp = 0; sp < f.splits; ++sp) {
    e += weight(sp) * f.part_e[sp * f.rows + r];
    rad += weight(sp) * f.part_r[sp * f.rows + r];
  }
  double ed = 0.0, k = 0.0;
  if (f.with_diag) diag_term(f.pd, f.pd.normalize ? f.sa[r] : f.st[r], ed, k);
  if (lse) {
    f.e_row[r] = top + log(f.pair_scale * e);
    f.e_diag[r] = f.with_diag ? ed : -static_cast<double>(INFINITY);
    f.m_row[r] = top;
    f.r_row[r] = rad;
    f.k_row[r] = k;
    return;
  }
  row_grad(f.pd.normalize, f.x + r * D, f.pd.normalize ? f.st[r] : 1.0, g, rad, f.gs, k * f.kscale, D, g);
  f.e_row[r] = e;
  f.e_diag[r] = ed;
}

// The Gaussian kind's gradient rows once log Z of their batch entry is known: row i's pair sums weigh
// exp(m_i - log Z) (times grad_scale), its self term exp(x_ii - log Z).
template <typename T>
__global__ void lse_epilogue_kernel(const FinishArgs<T> f, int64_t n, const double* lz, double grad_scale) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= f.rows) return;
  const double l = lz[r / n];
  const double gs = f.m_row[r] > -static_cast<double>(INFINITY) ? grad_scale * exp(f.m_row[r] - l) : 0.0;
  const double ks = f.with_diag ? exp(f.e_diag[r] - l) : 0.0;
  T* g = f.grad + r * f.D;
  row_grad(f.pd.normalize, f.x + r * f.D, f.pd.normalize ? f.st[r] : 1.0, g, f.r_row[r], gs, f.k_row[r] * ks, f.D,
           g);
}

// One block per batch entry, fixed order. Sums: out[b] = scale (pair_scale sum_i e_row + sum_i e_diag)
// (pair_scale already in e_row's log terms for the Gaussian kind). Log-sum (lse): lz[b] = log(sum_i exp(e_row)
// + sum_i exp(e_diag)), out[b] = lz[b] + log(scale).
// static: internal linkage (not a template), so that the header can be included by more than one translation
// unit (csrc/tests/cuda_link_check.cu checks it).
static __global__ void __launch_bounds__(kReduceThreads) reduce_energy_kernel(const double* e_row,
                                                                             const double* e_diag, int64_t n,
                                                                             double pair_scale, double scale,
                                                                             bool lse, double* out, double* lz) {
  __shared__ double sp[kReduceThreads], sd[kReduceThreads];
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  double top = -static_cast<double>(INFINITY);
  if (lse) {
    for (int64_t i = tid; i < n; i += kReduceThreads) {
      top = hsu_max(top, e_row[b * n + i]);
      if (e_diag) top = hsu_max(top, e_diag[b * n + i]);
    }
    sp[tid] = top;
    __syncthreads();
    for (int w = kReduceThreads / 2; w > 0; w >>= 1) {
      if (tid < w) sp[tid] = hsu_max(sp[tid], sp[tid + w]);
      __syncthreads();
    }
    top = sp[0];
    __syncthreads();
  }
  const bool dead = lse && !(top > -static_cast<double>(INFINITY));
  double ps = 0.0, ds = 0.0;
  for (int64_t i = tid; i < n && !dead; i += kReduceThreads) {
    ps += lse ? exp(e_row[b * n + i] - top) : e_row[b * n + i];
    if (e_diag) ds += lse ? exp(e_diag[b * n + i] - top) : e_diag[b * n + i];
  }
  sp[tid] = ps;
  sd[tid] = ds;
  __syncthreads();
  for (int w = kReduceThreads / 2; w > 0; w >>= 1) {
    if (tid < w) {
      sp[tid] += sp[tid + w];
      sd[tid] += sd[tid + w];
    }
    __syncthreads();
  }
  if (tid != 0) return;
  if (lse) {
    const double l = dead ? top : top + log(sp[0] + sd[0]);
    lz[b] = l;
    out[b] = l + log(scale);
  } else {
    out[b] = scale * (pair_scale * sp[0] + sd[0]);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Host launchers. Each returns cudaGetLastError() after its launches.

// Compile-time register width of the small engine for rows of length D, or 0 for the general engine.
template <typename T>
inline int small_width(int64_t D) {
  if (D <= 4) return 4;
  if (D <= 16) return 16;
  if (sizeof(T) == 4 && D <= 32) return 32;  // 3 x 32 doubles per thread would spill
  return 0;
}

// Column splits: enough blocks for a few waves on `num_sms` SMs, each split keeping >= 2 column tiles.
template <typename T>
inline int choose_splits(int64_t B, int64_t n1, int64_t n2, int64_t D, int num_sms) {
  const int tile = small_width<T>(D) ? kSmallTile : kGenTile;
  const int64_t blocks = B * ((n1 + kBlock - 1) / kBlock);
  const int64_t target = 8 * static_cast<int64_t>(num_sms > 0 ? num_sms : 1);
  int64_t splits = (target + blocks - 1) / blocks;
  const int64_t ntiles = (n2 + tile - 1) / tile;
  const int64_t cap = ntiles / 2 > 1 ? ntiles / 2 : 1;
  if (splits > cap) splits = cap;
  if (splits > kMaxSplits) splits = kMaxSplits;
  return static_cast<int>(splits < 1 ? 1 : splits);
}

#ifndef HSU_CUDA_EMULATE
template <typename T>
inline cudaError_t launch_row_prep(const T* x, int64_t rows, int64_t D, bool normalize, double eps_norm, double* st,
                                   double* sa, T* z, T* qt, cudaStream_t stream) {
  if (rows > 0) {
    const int threads = 256;
    row_prep_kernel<T><<<grid_x(blocks_of(rows, threads)), threads, 0, stream>>>(
        x, rows, D, normalize, eps_norm, st, sa, z, qt);
  }
  return cudaGetLastError();
}

template <typename T, int64_t KIND>
inline void launch_small_kind(const PassArgs<T>& a, int width, dim3 grid, cudaStream_t stream) {
  const int mode = exponent_mode(a.p);
  switch (width) {
    case 4: pair_pass_small<T, KIND, 4><<<grid, kBlock, 0, stream>>>(a, mode); break;
    case 16: pair_pass_small<T, KIND, 16><<<grid, kBlock, 0, stream>>>(a, mode); break;
    default:
      if constexpr (sizeof(T) == 4) pair_pass_small<T, KIND, 32><<<grid, kBlock, 0, stream>>>(a, mode);
      break;
  }
}

// The pass over all pairs; the partial buffers in `a` must hold a.splits entries.
template <typename T>
inline cudaError_t launch_pair_pass(const PassArgs<T>& a, cudaStream_t stream) {
  if (a.B == 0 || a.n1 == 0) return cudaGetLastError();
  const int64_t nrb = (a.n1 + kBlock - 1) / kBlock;
  const dim3 grid(grid_x(a.B * nrb), static_cast<unsigned>(a.splits));
  const int width = small_width<T>(a.D);
  if (width == 0) {
    pair_pass_general<T><<<grid, kBlock, 0, stream>>>(a);
    return cudaGetLastError();
  }
  HSU_KIND_SWITCH(a.p.kind, KIND, [&] { launch_small_kind<T, KIND>(a, width, grid, stream); });
  return cudaGetLastError();
}

template <typename T>
inline cudaError_t launch_finish_rows(const FinishArgs<T>& f, cudaStream_t stream) {
  if (f.rows > 0) {
    const int threads = 128;
    finish_rows_kernel<T><<<grid_x(blocks_of(f.rows, threads)), threads, 0, stream>>>(f);
  }
  return cudaGetLastError();
}

template <typename T>
inline cudaError_t launch_lse_epilogue(const FinishArgs<T>& f, int64_t n, const double* lz, double grad_scale,
                                       cudaStream_t stream) {
  if (f.rows > 0) {
    const int threads = 128;
    lse_epilogue_kernel<T><<<grid_x(blocks_of(f.rows, threads)), threads, 0, stream>>>(
        f, n, lz, grad_scale);
  }
  return cudaGetLastError();
}

inline cudaError_t launch_reduce_energy(const double* e_row, const double* e_diag, int64_t B, int64_t n,
                                        double pair_scale, double scale, bool lse, double* out, double* lz,
                                        cudaStream_t stream) {
  if (B > 0)
    reduce_energy_kernel<<<grid_x(B), kReduceThreads, 0, stream>>>(e_row, e_diag, n, pair_scale, scale, lse, out,
                                                                   lz);
  return cudaGetLastError();
}

#endif  // HSU_CUDA_EMULATE

}  // namespace cuda
}  // namespace hsu
