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
  const T* x;   // [B, n1, D], contiguous
  const T* sx;  // [B, n1] row statistics (row_stat: 1/sqrt(|x|^2 + eps) or |x|^2)
  const T* y;   // [B, n2, D]
  const T* sy;  // [B, n2]
  int64_t B, n1, n2, D;
  bool self;    // X is Y: skip the pair (i, i)
  Params<T> p;
  int splits;       // column ranges, each writing its own partial sums
  double* part_e;   // [splits, B, n1]
  T* part_a;        // [splits, B, n1, D]
  T* part_b;        // [splits, B, n1], nullptr when normalized
};

// ---------------------------------------------------------------------------------------------------------
// Per-pair dispatch: kind fixed at compile time, half-space / normalize / exponent mode uniform run-time
// branches (the same for every thread of the launch, so they never diverge).

template <int64_t KIND, bool HS, bool NORM, typename T>
__device__ __forceinline__ void pair_mode(const Params<T>& p, int mode, T dot, T si, T sj, T& e, T& cj, T& ci) {
  if (KIND == kRiesz || KIND == kAngular) {
    switch (mode) {
      case kPowRsqrt: pair_terms_k<KIND, HS, NORM, kPowRsqrt>(p.s, p.t, p.eps_ang, dot, si, sj, e, cj, ci); return;
      case kPowRecip: pair_terms_k<KIND, HS, NORM, kPowRecip>(p.s, p.t, p.eps_ang, dot, si, sj, e, cj, ci); return;
      case kPowRecip2: pair_terms_k<KIND, HS, NORM, kPowRecip2>(p.s, p.t, p.eps_ang, dot, si, sj, e, cj, ci); return;
      default: pair_terms_k<KIND, HS, NORM, kPowGeneral>(p.s, p.t, p.eps_ang, dot, si, sj, e, cj, ci); return;
    }
  } else {
    pair_terms_k<KIND, HS, NORM, kPowGeneral>(p.s, p.t, p.eps_ang, dot, si, sj, e, cj, ci);
  }
}

template <int64_t KIND, typename T>
__device__ __forceinline__ void pair_dev(const Params<T>& p, int mode, T dot, T si, T sj, T& e, T& cj, T& ci) {
  // Angular kinds exist only normalized (checked before launch); no un-normalized code is generated for them.
  constexpr bool kMayBeRaw = KIND == kRiesz || KIND == kLog || KIND == kGaussian;
  if (!kMayBeRaw || p.normalize) {
    if (p.half_space) pair_mode<KIND, true, true>(p, mode, dot, si, sj, e, cj, ci);
    else pair_mode<KIND, false, true>(p, mode, dot, si, sj, e, cj, ci);
  } else {
    if (p.half_space) pair_mode<KIND, true, false>(p, mode, dot, si, sj, e, cj, ci);
    else pair_mode<KIND, false, false>(p, mode, dot, si, sj, e, cj, ci);
  }
}

// Exponent mode of x^(-q): q = s/2 for Riesz (d2^(-s/2)), q = s for angular.
template <typename T>
inline int exponent_mode(const Params<T>& p) {
  if (p.kind == kRiesz) return pow_mode(T(0.5) * p.s);
  if (p.kind == kAngular) return pow_mode(p.s);
  return kPowGeneral;
}

// Tiles [t0, t1) of the column range that split `split` owns (whole tiles, as even as possible).
__device__ __forceinline__ void split_tiles(int64_t n2, int tile, int split, int splits, int64_t& t0, int64_t& t1) {
  const int64_t ntiles = (n2 + tile - 1) / tile;
  t0 = ntiles * split / splits;
  t1 = ntiles * (split + 1) / splits;
}

// ---------------------------------------------------------------------------------------------------------
// Small-D engine.

template <typename T, int64_t KIND, int DP>
__global__ void __launch_bounds__(kBlock) pair_pass_small(const PassArgs<T> a, const int mode) {
  __shared__ __align__(16) T ys[kSmallTile][DP];
  __shared__ T ssy[kSmallTile];
  const int tid = threadIdx.x;
  const int64_t nrb = (a.n1 + kBlock - 1) / kBlock;
  const int64_t bb = static_cast<int64_t>(blockIdx.x) / nrb;
  const int64_t i = (static_cast<int64_t>(blockIdx.x) % nrb) * kBlock + tid;
  const int split = blockIdx.y;
  const bool row_ok = i < a.n1;
  const int64_t D = a.D;
  const T* xb = a.x + bb * a.n1 * D;
  const T* yb = a.y + bb * a.n2 * D;

  T xi[DP], acc[DP];
#pragma unroll
  for (int d = 0; d < DP; ++d) {
    xi[d] = (row_ok && d < D) ? xb[i * D + d] : T(0);
    acc[d] = T(0);
  }
  const T si = row_ok ? a.sx[bb * a.n1 + i] : T(1);
  double erow = 0.0;
  T brow = T(0);

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
      ssy[tid] = col_ok ? a.sy[bb * a.n2 + j] : T(1);
    }
    __syncthreads();
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
      T e, c, ci;
      pair_dev<KIND>(a.p, mode, dot, si, ssy[jj], e, c, ci);
      const bool keep = jj != skip;
      esum += keep ? e : T(0);
      brow += keep ? ci : T(0);
      c = keep ? c : T(0);
#pragma unroll
      for (int d = 0; d < DP; ++d) acc[d] += c * yv[d];
    }
    erow += static_cast<double>(esum);
  }

  if (!row_ok) return;
  const int64_t r = (static_cast<int64_t>(split) * a.B + bb) * a.n1 + i;
  a.part_e[r] = erow;
  if (a.part_b) a.part_b[r] = brow;
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
  __shared__ T ssy[kGenTile];
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
  const T si = row_ok ? a.sx[bb * a.n1 + i] : T(1);
  const int64_t r = (static_cast<int64_t>(split) * a.B + bb) * a.n1 + i;
  T* arow = a.part_a + r * D;
  if (row_ok)
    for (int64_t d = 0; d < D; ++d) arow[d] = T(0);
  const bool one_chunk = D <= kGenChunk;  // the Y chunk of the dot products is still in ys for the update
  double erow = 0.0;
  T brow = T(0);

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
      if (tid < kGenTile) ssy[tid] = tid < m ? a.sy[bb * a.n2 + j0 + tid] : T(1);
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
    T esum = T(0);
    for (int jj = 0; jj < m; ++jj) {  // the row's own entries of buf: no synchronization needed
      T e, c, ci;
      pair_terms(a.p, buf[tid][jj], si, ssy[jj], e, c, ci);
      const bool keep = jj != skip;
      esum += keep ? e : T(0);
      brow += keep ? ci : T(0);
      buf[tid][jj] = keep ? c : T(0);
    }
    for (int jj = m; jj < kGenTile; ++jj) buf[tid][jj] = T(0);
    erow += static_cast<double>(esum);
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
  if (a.part_b) a.part_b[r] = brow;
}

// ---------------------------------------------------------------------------------------------------------
// Row statistics, row epilogue, energy reduction.

// sq[r] = |x_r|^2 (summed in order, as the CPU kernel does), st[r] = row_stat(sq[r]).
template <typename T>
__global__ void row_stats_kernel(const T* x, int64_t rows, int64_t D, const Params<T> p, T eps_norm, T* sq, T* st) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const T* xr = x + r * D;
  T acc = T(0);
  for (int64_t d = 0; d < D; ++d) acc += xr[d] * xr[d];
  sq[r] = acc;
  st[r] = row_stat(p, acc, eps_norm);
}

template <typename T>
struct FinishArgs {
  const T* x;  // [rows, D]
  const T* sq;
  const T* st;
  int64_t rows, D;
  int splits;
  const double* part_e;
  const T* part_a;
  const T* part_b;  // nullptr when normalized
  Params<T> p;
  T eps_norm;
  T scale;          // grad_scale
  bool with_diag;   // half-space self energy: the pair (w_i, -w_i)
  T* grad;          // [rows, D] dE/dw
  double* e_row;    // [rows] pair energy sums of the row
  double* e_diag;   // [rows] half-space self terms (0 without)
};

// Adds the split partials in split order, then applies the header's row epilogue (row_grad, diag_term).
template <typename T>
__global__ void finish_rows_kernel(const FinishArgs<T> f) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= f.rows) return;
  const int64_t D = f.D;
  T* g = f.grad + r * D;
  for (int64_t d = 0; d < D; ++d) {
    T s = T(0);
    for (int sp = 0; sp < f.splits; ++sp) s += f.part_a[(sp * f.rows + r) * D + d];
    g[d] = s;
  }
  double e = 0.0;
  T b = T(0);
  for (int sp = 0; sp < f.splits; ++sp) {
    e += f.part_e[sp * f.rows + r];
    if (f.part_b) b += f.part_b[sp * f.rows + r];
  }
  T ed = T(0), k = T(0);
  if (f.with_diag) diag_term(f.p, f.sq[r], f.eps_norm, ed, k);
  row_grad(f.p, f.x + r * D, f.st[r], g, b, f.scale, k, D, g);
  f.e_row[r] = e;
  f.e_diag[r] = static_cast<double>(ed);
}

// out[b] = pair_scale * sum_i e_row[b, i] + sum_i e_diag[b, i], one block per batch entry, fixed order.
// static: this header is compiled into more than one translation unit of the extension (not a template).
static __global__ void __launch_bounds__(kReduceThreads) reduce_energy_kernel(const double* e_row, const double* e_diag,
                                                                      int64_t n, double pair_scale, double* out) {
  __shared__ double sp[kReduceThreads], sd[kReduceThreads];
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  double ps = 0.0, ds = 0.0;
  for (int64_t i = tid; i < n; i += kReduceThreads) {
    ps += e_row[b * n + i];
    if (e_diag) ds += e_diag[b * n + i];
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
  if (tid == 0) out[b] = pair_scale * sp[0] + sd[0];
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
inline cudaError_t launch_row_stats(const T* x, int64_t rows, int64_t D, const Params<T>& p, T eps_norm, T* sq,
                                    T* st, cudaStream_t stream) {
  if (rows > 0) {
    const int threads = 256;
    row_stats_kernel<T><<<grid_x(blocks_of(rows, threads)), threads, 0, stream>>>(
        x, rows, D, p, eps_norm, sq, st);
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
  switch (a.p.kind) {
    case kRiesz: launch_small_kind<T, kRiesz>(a, width, grid, stream); break;
    case kLog: launch_small_kind<T, kLog>(a, width, grid, stream); break;
    case kAngular: launch_small_kind<T, kAngular>(a, width, grid, stream); break;
    case kAngularLog: launch_small_kind<T, kAngularLog>(a, width, grid, stream); break;
    default: launch_small_kind<T, kGaussian>(a, width, grid, stream); break;
  }
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

inline cudaError_t launch_reduce_energy(const double* e_row, const double* e_diag, int64_t B, int64_t n,
                                        double pair_scale, double* out, cudaStream_t stream) {
  if (B > 0) reduce_energy_kernel<<<grid_x(B), kReduceThreads, 0, stream>>>(e_row, e_diag, n, pair_scale, out);
  return cudaGetLastError();
}

#endif  // HSU_CUDA_EMULATE

}  // namespace cuda
}  // namespace hsu
