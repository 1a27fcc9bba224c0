// The CPU kernel's cross energies (rows of x against rows of y), every kind, two engines chosen by D
// (csrc/cpu/hsu_cpu.cpp has the op entry points, hsu_cpu_internal.h what the engines share):
//  * direct (D <= kDirectMaxD): each row streams the columns of a transposed copy of Y in chunks; dot
//    products, pair terms and accumulation are loops the compiler vectorizes (omp simd);
//  * tiled GEMM (larger D): (row block, column block) tiles with BLAS products, one-sided (each side of the
//    cross energy has its own pass).
// The log-sum kind (the Gaussian) is reduced in the same row loops as an online log-sum-exp: each row keeps a
// shift (the largest maximum it has seen) and its sums are rescaled when it grows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "hsu_cpu_internal.h"

namespace hsu {
HSU_ISA_BEGIN
namespace cpu {
namespace {

#ifndef HSU_GEMM_ROWS
#define HSU_GEMM_ROWS 64
#endif
#ifndef HSU_GEMM_COLS
#define HSU_GEMM_COLS 1024
#endif
constexpr int64_t kRowBlock = 32;    // rows per parallel task (direct engine)
constexpr int64_t kGemmRowBlock = HSU_GEMM_ROWS;  // rows per parallel task (GEMM engine)
constexpr int64_t kChunk = 256;      // columns per vectorized chunk (direct engine)
constexpr int64_t kColBlock = HSU_GEMM_COLS;   // columns per tile (GEMM engine)

// Direct engine over rows [i0, i1) of X against all n2 rows of Y, given Y's geometry rows transposed
// (YG: [D, n2], in double).
template <typename T, int64_t KIND, bool HS, bool NORM, int MODE>
void direct_rows(const PassCtx<T>& cx, const Side<T, double>& X, int64_t i0, int64_t i1, const Side<T, double>& Y,
                 const double* YG, RowOut<T> out) {
  // Dot products and the gradient's sums in double: exact products of float inputs, so 1 - |g| keeps the
  // digits that matter for nearly parallel rows (points on a sphere, D = 3).
  constexpr bool LSE = KindTraits<KIND>::logsum;
  const int64_t n2 = Y.n, D = X.D;
  const double* XG = X.xg.template data_ptr<double>();
  double dot[kChunk], cj[kChunk];
  T ecol[kChunk], ccol[kChunk], x1[kChunk], x2[kChunk], flag[kChunk];
  std::vector<double> acc(D);
  for (int64_t i = i0; i < i1; ++i) {
    const double* xi = XG + i * D;
    std::fill(acc.begin(), acc.end(), 0.0);
    double erow = 0.0, rad = 0.0, shift = -static_cast<double>(INFINITY);
    for (int64_t j0 = 0; j0 < n2; j0 += kChunk) {
      const int64_t m = std::min(kChunk, n2 - j0);
      for (int64_t jj = 0; jj < m; ++jj) dot[jj] = 0.0;
      for (int64_t d = 0; d < D; ++d) {
        const double xd = xi[d];
        const double* yt = YG + d * n2 + j0;
#pragma omp simd
        for (int64_t jj = 0; jj < m; ++jj) dot[jj] += xd * yt[jj];
      }
      const double qi = NORM ? 0.0 : X.q[i];
      const double* qj = NORM ? nullptr : Y.q + j0;
      int64_t ncare;
      if constexpr (LSE) {
        ncare = cx.check ? row_logs<T, double, HS, NORM, true>(cx.p.t, dot, qi, qj, m, -1, x1, x2, flag)
                         : row_logs<T, double, HS, NORM, false>(cx.p.t, dot, qi, qj, m, -1, x1, x2, flag);
        std::vector<CarefulGeom> geo;
        if (ncare)
          for (int64_t jj = 0; jj < m; ++jj)
            if (flag[jj] != T(0)) {
              double l1, l2;
              geo.push_back(careful_gauss_logs<T, double, HS, NORM>(cx, X, i, Y, j0 + jj, l1, l2));
              x1[jj] = static_cast<T>(l1);
              x2[jj] = static_cast<T>(l2);
            }
        lift_shift(shift, row_max(x1, x2, m), erow, rad, acc.data(), D);
        T es;
        double bs;
        row_weights<T, NORM>(cx.p.t, weight_shift<T>(shift), x1, x2, flag, m, cj, ecol, ccol, es, bs);
        erow += static_cast<double>(es);
        rad += static_cast<double>(bs);
        size_t k = 0;
        for (int64_t jj = 0; ncare && jj < m; ++jj)
          if (flag[jj] != T(0))
            careful_gauss_apply<T, double, NORM>(cx, geo[k++], X, i, Y, j0 + jj, gauss_weight(x1[jj], shift),
                                                 gauss_weight(x2[jj], shift), acc.data(), rad);
      } else {
        T es;
        double bs;
        ncare = row_terms_checked<T, double, KIND, HS, NORM, MODE>(cx, dot, qi, qj, m, -1, cj, flag, ecol, ccol, es, bs);
        erow += static_cast<double>(es);
        rad += static_cast<double>(bs);
        if (ncare) {
          double unused = 0.0;
          for (int64_t jj = 0; jj < m; ++jj)
            if (flag[jj] != T(0))
              erow += careful_pair<T, double, KIND, HS, NORM>(cx, X, i, Y, j0 + jj, acc.data(),
                                                              static_cast<double*>(nullptr), rad, unused);
        }
      }
      for (int64_t d = 0; d < D; ++d) {
        const double* yt = YG + d * n2 + j0;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t jj = 0; jj < m; ++jj) s += cj[jj] * yt[jj];
        acc[d] += s;
      }
    }
    out.e[i] = erow;
    out.rad[i] = rad;
    if (out.m) out.m[i] = shift;
    std::copy(acc.begin(), acc.end(), out.ad + i * D);
  }
}

// GEMM engine over rows [i0, i1) of X against all rows of Y, one thread (called inside a task that holds a
// WorkerScope). G = T here: the products are BLAS calls in T.
template <typename T, int64_t KIND, bool HS, bool NORM, int MODE>
void gemm_rows(const PassCtx<T>& cx, const Side<T, T>& X, int64_t bb, int64_t i0, int64_t i1, const Side<T, T>& Y,
               RowOut<T> out) {
  constexpr bool LSE = KindTraits<KIND>::logsum;
  const int64_t n2 = Y.n, D = X.D;
  const int64_t bi = i1 - i0;
  at::Tensor xi = X.xg[bb].narrow(0, i0, bi);
  at::Tensor S = at::empty({bi, std::min(kColBlock, n2)}, X.z.options());
  at::Tensor a = at::zeros({bi, D}, X.z.options());
  std::vector<double> erow(bi, 0.0), rad(bi, 0.0), shift(bi, -static_cast<double>(INFINITY));
  std::vector<T> ecol(kColBlock), ccol(kColBlock), flag(kColBlock), x1, x2;
  if (LSE) {
    x1.resize(kColBlock);
    x2.resize(kColBlock);
  }
  const Side<T, T> Xb{X.xg, X.z, X.w + bb * X.n * D, NORM ? X.r + bb * X.n : nullptr, NORM ? X.a + bb * X.n : nullptr,
                      NORM ? nullptr : X.q + bb * X.n, NORM ? nullptr : X.qg + bb * X.n, X.n, D};
  const Side<T, T> Yb{Y.xg, Y.z, Y.w + bb * n2 * D, NORM ? Y.r + bb * n2 : nullptr, NORM ? Y.a + bb * n2 : nullptr,
                      NORM ? nullptr : Y.q + bb * n2, NORM ? nullptr : Y.qg + bb * n2, n2, D};
  T* ap = a.data_ptr<T>();
  for (int64_t j0 = 0; j0 < n2; j0 += kColBlock) {
    const int64_t m = std::min(kColBlock, n2 - j0);
    at::Tensor yj = Y.xg[bb].narrow(0, j0, m);
    at::Tensor St = S.narrow(1, 0, m);
    at::mm_out(St, xi, yj.t());
    T* sp = S.data_ptr<T>();
    const int64_t ld = S.stride(0);
    for (int64_t r = 0; r < bi; ++r) {
      const int64_t i = i0 + r;
      T* row = sp + r * ld;
      const T qi = NORM ? T(0) : X.qg[bb * X.n + i];
      const T* qj = NORM ? nullptr : Y.qg + bb * n2 + j0;
      T es, bs;
      if constexpr (LSE) {
        const int64_t nc =
            cx.check ? row_logs<T, T, HS, NORM, true>(cx.p.t, row, qi, qj, m, -1, x1.data(), x2.data(), flag.data())
                     : row_logs<T, T, HS, NORM, false>(cx.p.t, row, qi, qj, m, -1, x1.data(), x2.data(), flag.data());
        std::vector<CarefulGeom> geo;
        if (nc)
          for (int64_t jj = 0; jj < m; ++jj)
            if (flag[jj] != T(0)) {
              double l1, l2;
              geo.push_back(careful_gauss_logs<T, T, HS, NORM>(cx, Xb, i, Yb, j0 + jj, l1, l2));
              x1[jj] = static_cast<T>(l1);
              x2[jj] = static_cast<T>(l2);
            }
        // the row's earlier sums (and its accumulator row, before this block's product is added) move to
        // the new shift; this block's weights are taken relative to it
        lift_shift(shift[r], row_max(x1.data(), x2.data(), m), erow[r], rad[r], ap + r * D, D);
        row_weights<T, NORM>(cx.p.t, weight_shift<T>(shift[r]), x1.data(), x2.data(), flag.data(), m, row,
                             ecol.data(), ccol.data(), es, bs);
        erow[r] += static_cast<double>(es);
        rad[r] += static_cast<double>(bs);
        size_t k = 0;
        for (int64_t jj = 0; nc && jj < m; ++jj)
          if (flag[jj] != T(0))
            careful_gauss_apply<T, T, NORM>(cx, geo[k++], Xb, i, Yb, j0 + jj, gauss_weight(x1[jj], shift[r]),
                                            gauss_weight(x2[jj], shift[r]), ap + r * D, rad[r]);
      } else {
        const int64_t nc = row_terms_checked<T, T, KIND, HS, NORM, MODE>(cx, row, qi, qj, m, -1, row, flag.data(),
                                                                          ecol.data(), ccol.data(), es, bs);
        erow[r] += static_cast<double>(es);
        rad[r] += static_cast<double>(bs);
        if (nc) {
          double unused = 0.0;
          for (int64_t jj = 0; jj < m; ++jj)
            if (flag[jj] != T(0))
              erow[r] += careful_pair<T, T, KIND, HS, NORM>(cx, Xb, i, Yb, j0 + jj, ap + r * D, static_cast<T*>(nullptr),
                                                            rad[r], unused);
        }
      }
    }
    a.addmm_(St, Y.z[bb].narrow(0, j0, m));
  }
  std::copy(ap, ap + bi * D, out.a + i0 * D);
  for (int64_t r = 0; r < bi; ++r) {
    out.e[i0 + r] = erow[r];
    out.rad[i0 + r] = rad[r];
    if (out.m) out.m[i0 + r] = shift[r];
  }
}

// One cross pass for every batch entry: rows of X[b] against rows of Y[b]. Tasks are (batch, row block) pairs
// of the direct or the GEMM engine.
template <typename T, int64_t KIND, bool HS, bool NORM, int MODE>
void cross_rows(const PassCtx<T>& cx, const Prepared<T>& X, const Prepared<T>& Y, RowOut<T> out) {
  const int64_t B = X.B, n1 = X.n, n2 = Y.n, D = X.D;
  const bool direct = D <= kDirectMaxD;
  at::Tensor YG;
  if (direct)  // [B, D, n2]: columns contiguous per coordinate
    YG = (std::is_same_v<T, double> ? Y.z : Y.zd).transpose(1, 2).contiguous();
  const int64_t rb = direct ? kRowBlock : kGemmRowBlock;
  const int64_t nblk = (n1 + rb - 1) / rb;
  at::parallel_for(0, B * nblk, 1, [&](int64_t t0, int64_t t1) {
    WorkerScope worker;
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t bb = task / nblk, blk = task % nblk;
      const int64_t i0 = blk * rb, i1 = std::min(n1, i0 + rb);
      RowOut<T> o{out.e + bb * n1, out.a ? out.a + bb * n1 * D : nullptr, out.ad ? out.ad + bb * n1 * D : nullptr,
                  out.rad + bb * n1, out.m ? out.m + bb * n1 : nullptr};
      if (direct) {
        // the batch entry's slices, as sides of their own
        auto slice = [&](const Prepared<T>& P, int64_t b) {
          Side<T, double> s = P.template side<double>();
          s.xg = (std::is_same_v<T, double> ? P.z : P.zd)[b];
          s.w += b * P.n * D;
          if (NORM) {
            s.r += b * P.n;
            s.a += b * P.n;
          } else {
            s.q += b * P.n;
            s.qg += b * P.n;
          }
          return s;
        };
        direct_rows<T, KIND, HS, NORM, MODE>(cx, slice(X, bb), i0, i1, slice(Y, bb),
                                                    YG.data_ptr<double>() + bb * D * n2, o);
      } else {
        gemm_rows<T, KIND, HS, NORM, MODE>(cx, X.template side<T>(), bb, i0, i1, Y.template side<T>(), o);
      }
    }
  });
}


}  // namespace

template <typename T>
void cross_pass(const PassCtx<T>& cx, const Prepared<T>& X, const Prepared<T>& Y, RowOut<T> out) {
  dispatch_pass(cx.p, [&]<int64_t KIND, bool HS, bool NORM, int MODE>() {
    cross_rows<T, KIND, HS, NORM, MODE>(cx, X, Y, out);
  });
}

template void cross_pass<float>(const PassCtx<float>&, const Prepared<float>&, const Prepared<float>&, RowOut<float>);
template void cross_pass<double>(const PassCtx<double>&, const Prepared<double>&, const Prepared<double>&,
                                 RowOut<double>);

}  // namespace cpu
HSU_ISA_END
}  // namespace hsu
