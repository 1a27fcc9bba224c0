// The CUDA self-energy kernel for D <= 4 (points on a circle or a low-dimensional sphere) and its host
// launchers, free of torch. csrc/cuda/hsu_cuda_small.cu binds it for torch.ops.hsu.energy_grad (the hook in
// hsu_cuda.cu sends D <= 4 there, every kind but the Gaussian); csrc/tests/cuda_compile_check.cu and
// csrc/tests/test_cuda_emulated.cpp instantiate it without torch.
//
// Same arithmetic contract as the CPU kernel for these D (csrc/cpu/hsu_cpu_small.cpp): squared distances from
// coordinate differences, never 2 - 2g, and the gradient accumulated as A, K (csrc/hsu_small_pair.h), so
// nearly parallel and nearly antipodal rows keep their digits. In float32 the unit rows are carried as
// unevaluated sums hi + lo of two floats (hi the float nearest to u computed in double, lo the rest): for two
// close rows hi_i - hi_j is exact and (hi_i - hi_j) + (lo_i - lo_j) is u_i - u_j to float precision, where
// float u_i - u_j alone would be off by ~1e-7 / |u_i - u_j| relative. Arithmetic is exact IEEE fp32/fp64 (no
// fast-math intrinsics); phi and phi' are those of csrc/hsu_pair.h.
//
// Layout: one thread per row i, every column j (each pair twice, once from each side: no atomics); the
// columns stream through shared memory in tiles of kSmallTile, split into `splits` column ranges (grid.y)
// with partial sums per split, added in split order by the finish kernel; the energies are then reduced by
// hsu_cuda_kernels.cuh's reduce_energy_kernel in a fixed tree order. Bitwise reproducible for a given device.
//
// This kernel has been compiled by nvcc (CMake compile check) and run on CPU threads under
// csrc/tests/test_cuda_emulated.cpp; it has not yet run on a GPU.
#pragma once

#ifndef HSU_CUDA_EMULATE
#include <cuda_runtime.h>
#endif

#include <cstdint>

#include "../hsu_pair.h"
#include "../hsu_small_pair.h"
#include "hsu_cuda_kernels.cuh"

namespace hsu {
namespace cuda {

constexpr int64_t kSmallDMax = 4;

// Per-row data of the pass, rows = B * n (row r = b * n + i), coordinates zero-padded to 4.
template <typename T>
struct SmallRowsArgs {
  const T* x;  // [rows, D]
  int64_t rows, D;
  bool normalize;
  double eps_norm;
  T* hi;       // [rows, 4]: u (normalized) or x
  T* lo;       // [rows, 4]: u - hi (float32 normalized; 0 otherwise)
  T* a;        // [rows]: eps_norm / (|w|^2 + eps_norm) (normalized; 0 otherwise)
  double* sq;  // [rows]: the caller's NaN/Inf and zero-row checks: normalized 1 / sqrt(|w|^2 + eps_norm), in
               // double for any finite row (hsu_pair.h's row_norm), else |w|^2 in double
};

template <typename T>
__global__ void small_rows_kernel(const SmallRowsArgs<T> s) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= s.rows) return;
  const T* xr = s.x + r * s.D;
  double scale = 1.0, a = 0.0;
  bool finite = true;
  for (int64_t d = 0; d < s.D; ++d) finite = finite && is_finite(static_cast<double>(xr[d]));
  if (s.normalize) {
    row_norm(xr, s.D, s.eps_norm, scale, a);
    s.sq[r] = finite ? scale : static_cast<double>(NAN);
  } else {
    s.sq[r] = finite ? row_sq(xr, s.D) : static_cast<double>(NAN);
  }
  for (int64_t d = 0; d < kSmallDMax; ++d) {
    const double u = d < s.D ? static_cast<double>(xr[d]) * scale : 0.0;
    const T h = static_cast<T>(u);
    s.hi[r * kSmallDMax + d] = h;
    s.lo[r * kSmallDMax + d] = static_cast<T>(u - static_cast<double>(h));
  }
  s.a[r] = static_cast<T>(a);
}

// One pass over all pairs. Partials: part_e [splits, rows], part_a [splits, rows, 4], part_k [splits, rows].
template <typename T>
struct SmallPassArgs {
  const T* hi;
  const T* lo;
  const T* a;
  int64_t B, n;
  Params<T> p;
  int splits;
  double* part_e;
  T* part_a;
  T* part_k;
};

template <int64_t KIND, bool HS, bool NORM, typename T>
__device__ __forceinline__ void small_pair_mode(const Params<T>& p, int mode, T d2m, T d2p, T& f, T& cm, T& cp) {
  if (KIND == kRiesz || KIND == kAngular) {
    switch (mode) {
      case kPowRsqrt: small_pair<KIND, HS, NORM, kPowRsqrt>(p.s, p.t, p.eps_ang, d2m, d2p, f, cm, cp); return;
      case kPowRecip: small_pair<KIND, HS, NORM, kPowRecip>(p.s, p.t, p.eps_ang, d2m, d2p, f, cm, cp); return;
      case kPowRecip2: small_pair<KIND, HS, NORM, kPowRecip2>(p.s, p.t, p.eps_ang, d2m, d2p, f, cm, cp); return;
      default: small_pair<KIND, HS, NORM, kPowGeneral>(p.s, p.t, p.eps_ang, d2m, d2p, f, cm, cp); return;
    }
  } else {
    small_pair<KIND, HS, NORM, kPowGeneral>(p.s, p.t, p.eps_ang, d2m, d2p, f, cm, cp);
  }
}

// LO: the rows carry a low part (float32 normalized).
template <typename T, int64_t KIND, bool HS, bool NORM, bool LO>
__global__ void __launch_bounds__(kBlock) small_pass_kernel(const SmallPassArgs<T> s, const int mode) {
  constexpr bool kBoth = HS || KIND == kAngular || KIND == kAngularLog;
  __shared__ __align__(16) T sh_hi[kSmallTile][kSmallDMax];
  __shared__ __align__(16) T sh_lo[kSmallTile][kSmallDMax];
  __shared__ T sh_a[kSmallTile];
  const int tid = threadIdx.x;
  const int64_t nrb = (s.n + kBlock - 1) / kBlock;
  const int64_t bb = static_cast<int64_t>(blockIdx.x) / nrb;
  const int64_t i = (static_cast<int64_t>(blockIdx.x) % nrb) * kBlock + tid;
  const int split = blockIdx.y;
  const bool row_ok = i < s.n;
  const int64_t base = bb * s.n;  // first row of this batch entry

  T hi_i[kSmallDMax], lo_i[kSmallDMax], acc[kSmallDMax];
  for (int d = 0; d < kSmallDMax; ++d) {
    hi_i[d] = row_ok ? s.hi[(base + i) * kSmallDMax + d] : T(0);
    lo_i[d] = (LO && row_ok) ? s.lo[(base + i) * kSmallDMax + d] : T(0);
    acc[d] = T(0);
  }
  const T a_i = (NORM && row_ok) ? s.a[base + i] : T(0);
  T kacc = T(0);
  double erow = 0.0;

  int64_t t0, t1;
  split_tiles(s.n, kSmallTile, split, s.splits, t0, t1);
  for (int64_t tile = t0; tile < t1; ++tile) {
    const int64_t j0 = tile * kSmallTile;
    const int m = static_cast<int>(s.n - j0 < kSmallTile ? s.n - j0 : kSmallTile);
    __syncthreads();  // the previous tile is consumed
    {
      const int64_t j = base + j0 + tid;
      const bool col_ok = tid < m;
      for (int d = 0; d < kSmallDMax; ++d) {
        sh_hi[tid][d] = col_ok ? s.hi[j * kSmallDMax + d] : T(0);
        sh_lo[tid][d] = (LO && col_ok) ? s.lo[j * kSmallDMax + d] : T(0);
      }
      sh_a[tid] = (NORM && col_ok) ? s.a[j] : T(0);
    }
    __syncthreads();
    // The pair (i, i) is selected away, never subtracted: its terms are infinite when eps_norm = 0.
    const int skip = (i >= j0 && i < j0 + m) ? static_cast<int>(i - j0) : -1;
    T esum = T(0);
    for (int jj = 0; jj < m; ++jj) {
      T dm[kSmallDMax], dp[kSmallDMax];
      T sm = T(0), sp = T(0);
#pragma unroll
      for (int d = 0; d < kSmallDMax; ++d) {
        dm[d] = LO ? (hi_i[d] - sh_hi[jj][d]) + (lo_i[d] - sh_lo[jj][d]) : hi_i[d] - sh_hi[jj][d];
        sm += dm[d] * dm[d];
        if (kBoth) {
          dp[d] = LO ? (hi_i[d] + sh_hi[jj][d]) + (lo_i[d] + sh_lo[jj][d]) : hi_i[d] + sh_hi[jj][d];
          sp += dp[d] * dp[d];
        } else {
          dp[d] = T(0);
        }
      }
      if (NORM) {
        const T aa = a_i + sh_a[jj];
        sm += aa;
        sp += aa;
      }
      T f, cm, cp;
      small_pair_mode<KIND, HS, NORM>(s.p, mode, sm, kBoth ? sp : sm, f, cm, cp);
      const bool keep = jj != skip;
      esum += keep ? f : T(0);
      cm = keep ? cm : T(0);
      cp = (keep && HS) ? cp : T(0);
      // normalized: A_i += -cm (u_i - u_j) + cp (u_i + u_j), K_i += cm - cp; un-normalized: +cm (x_i - x_j)
#pragma unroll
      for (int d = 0; d < kSmallDMax; ++d) acc[d] += (NORM ? -cm : cm) * dm[d] + cp * dp[d];
      if (NORM) kacc += cm - cp;
    }
    erow += static_cast<double>(esum);
  }

  if (!row_ok) return;
  const int64_t r = static_cast<int64_t>(split) * s.B * s.n + base + i;
  s.part_e[r] = erow;
  s.part_k[r] = kacc;
  for (int d = 0; d < kSmallDMax; ++d) s.part_a[r * kSmallDMax + d] = acc[d];
}

// Sums the split partials in split order, then the row epilogue (small_row_grad, in double) and the half-space
// self pair (diag_term).
template <typename T>
struct SmallFinishArgs {
  const T* x;  // [rows, D]
  int64_t rows, D;
  int splits;
  const double* part_e;
  const T* part_a;
  const T* part_k;
  Params<double> p;
  double eps_norm;
  double scale;      // grad_scale(true, half_space) times out_scale
  double out_scale;  // the op's output scale (1/pairs for a mean)
  T* grad;         // [rows, D]
  double* e_row;   // [rows]
  double* e_diag;  // [rows]
};

template <typename T>
__global__ void small_finish_kernel(const SmallFinishArgs<T> f) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= f.rows) return;
  double A[kSmallDMax] = {0.0, 0.0, 0.0, 0.0}, w[kSmallDMax], u[kSmallDMax], out[kSmallDMax];
  double K = 0.0, e = 0.0;
  for (int sp = 0; sp < f.splits; ++sp) {
    const int64_t q = sp * f.rows + r;
    e += f.part_e[q];
    K += static_cast<double>(f.part_k[q]);
    for (int d = 0; d < kSmallDMax; ++d) A[d] += static_cast<double>(f.part_a[q * kSmallDMax + d]);
  }
  for (int64_t d = 0; d < f.D; ++d) w[d] = static_cast<double>(f.x[r * f.D + d]);
  // scale-safe row statistics (hsu_pair.h's row_norm), so rows of any finite norm get the 1/|w| gradient
  double rr = 1.0, a = 0.0, sq = 0.0;
  if (f.p.normalize) row_norm(f.x + r * f.D, f.D, f.eps_norm, rr, a);
  else sq = row_sq(f.x + r * f.D, f.D);
  for (int64_t d = 0; d < f.D; ++d) u[d] = w[d] * rr;
  double ed = 0.0, k = 0.0;
  if (f.p.half_space) diag_term(f.p, f.p.normalize ? a : sq, ed, k);
  small_row_grad(f.p.normalize, w, u, a, rr, A, K, 0.0, f.scale, k * f.out_scale, f.D, out);
  for (int64_t d = 0; d < f.D; ++d) f.grad[r * f.D + d] = static_cast<T>(out[d]);
  f.e_row[r] = e;
  f.e_diag[r] = ed;
}

// Column splits of the pass: as the general kernels choose them (a few waves of blocks on `num_sms`).
template <typename T>
inline int small_splits(int64_t B, int64_t n, int num_sms) {
  return choose_splits<T>(B, n, n, kSmallDMax, num_sms);
}

#ifndef HSU_CUDA_EMULATE
template <typename T>
inline cudaError_t launch_small_rows(const SmallRowsArgs<T>& s, cudaStream_t stream) {
  if (s.rows > 0) {
    const int threads = 256;
    small_rows_kernel<T><<<grid_x(blocks_of(s.rows, threads)), threads, 0, stream>>>(s);
  }
  return cudaGetLastError();
}

template <typename T, int64_t KIND, bool NORM>
inline void launch_small_kind(const SmallPassArgs<T>& s, dim3 grid, int mode, cudaStream_t stream) {
  constexpr bool kLo = NORM && sizeof(T) == 4;
  if (s.p.half_space) small_pass_kernel<T, KIND, true, NORM, kLo><<<grid, kBlock, 0, stream>>>(s, mode);
  else small_pass_kernel<T, KIND, false, NORM, kLo><<<grid, kBlock, 0, stream>>>(s, mode);
}

// The pass over all pairs; the partial buffers in `s` must hold s.splits entries. Kinds: all but the
// Gaussian (the caller sends that one to the general kernels).
template <typename T>
inline cudaError_t launch_small_pass(const SmallPassArgs<T>& s, cudaStream_t stream) {
  if (s.B == 0 || s.n == 0) return cudaGetLastError();
  const dim3 grid(grid_x(s.B * blocks_of(s.n, kBlock)), static_cast<unsigned>(s.splits));
  const int mode = exponent_mode(s.p);
  switch (s.p.kind) {
    case kRiesz:
      if (s.p.normalize) launch_small_kind<T, kRiesz, true>(s, grid, mode, stream);
      else launch_small_kind<T, kRiesz, false>(s, grid, mode, stream);
      break;
    case kLog:
      if (s.p.normalize) launch_small_kind<T, kLog, true>(s, grid, mode, stream);
      else launch_small_kind<T, kLog, false>(s, grid, mode, stream);
      break;
    case kAngular: launch_small_kind<T, kAngular, true>(s, grid, mode, stream); break;
    case kAngularLog: launch_small_kind<T, kAngularLog, true>(s, grid, mode, stream); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <typename T>
inline cudaError_t launch_small_finish(const SmallFinishArgs<T>& f, cudaStream_t stream) {
  if (f.rows > 0) {
    const int threads = 128;
    small_finish_kernel<T><<<grid_x(blocks_of(f.rows, threads)), threads, 0, stream>>>(f);
  }
  return cudaGetLastError();
}
#endif  // HSU_CUDA_EMULATE

}  // namespace cuda
}  // namespace hsu
