// The CPU kernel's self energies of the log-sum kind, the Gaussian (docs/spec.md §4: log(scale * sum
// exp(-t d2)); csrc/cpu/hsu_cpu.cpp has the op entry points, hsu_cpu_internal.h what the engines share): the
// symmetric tiles of hsu_cpu_self.cpp, in the same schedule (run_symmetric_tiles), as an online log-sum-exp.
// Each row keeps a shift (the largest tile maximum it has seen) and its sums are rescaled when it grows; the
// entry point combines the rows' sums into log Z. (The cross engines of hsu_cpu_cross.cpp reduce the log-sum
// kind in their own row loops, with the per-row helpers of hsu_cpu_internal.h.)
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

// The Gaussian kind's tile: the log terms of the tile (careful pairs recomputed first), the tile maximum
// mu, every row of both blocks lifted to a shift >= mu, then weights exp(x - mu) scaled per row by
// exp(mu - shift) (products of numbers <= 1: a weight lost to underflow is below the dtype's range
// relative to the tile's largest term, and so relative to the log-sum). The products, the log terms, the
// weights and the gradient products run by chunks as in sym_tile; the careful pairs, the maximum and the
// shifts on this thread.
template <typename T, typename G, bool HS, bool NORM>
void sym_tile_lse(const PassCtx<T>& cx, const Side<T, G>& X, int64_t bb, int64_t i0, int64_t i1, int64_t j0,
                  int64_t j1, RowOut<T> out, bool split) {
  const int64_t bi = i1 - i0, bj = j1 - j0, n = X.n, D = X.D;
  const bool diag = i0 == j0;
  const at::Tensor Xg = X.xg[bb];
  at::Tensor S = at::empty({bi, bj}, Xg.options());
  std::vector<T> x1(bi * bj), x2(bi * bj);
  std::vector<T> flags(bi * bj);
  const Chunks ch(bi, bj, diag, split);
  const Side<T, G> Xb{X.xg, X.z, X.w + bb * n * D, NORM ? X.r + bb * n : nullptr, NORM ? X.a + bb * n : nullptr,
                      NORM ? nullptr : X.q + bb * n, NORM ? nullptr : X.qg + bb * n, n, D};
  double* e = out.e + bb * n;
  double* rad = out.rad + bb * n;
  double* shift = out.m + bb * n;
  G* a = out.template acc<G>() + bb * n * D;
  G* sp = S.data_ptr<G>();
  const G* qj = NORM ? nullptr : Xb.qg + j0;
  std::vector<int64_t> row_care(bi, 0);
  for_chunks(ch.nrow, split, [&](int64_t k) {
    const int64_t r0 = ch.begin(k), r1 = r0 + ch.size(k, bi);
    tile_products<G>(S, Xg, i0, j0, bj, r0, r1 - r0);
    for (int64_t r = r0; r < r1; ++r)
      row_care[r] = cx.check ? row_logs<T, G, HS, NORM, true>(cx.p.t, sp + r * bj, NORM ? G(0) : Xb.qg[i0 + r], qj,
                                                              bj, diag ? r : -1, x1.data() + r * bj,
                                                              x2.data() + r * bj, flags.data() + r * bj)
                             : row_logs<T, G, HS, NORM, false>(cx.p.t, sp + r * bj, NORM ? G(0) : Xb.qg[i0 + r], qj,
                                                               bj, diag ? r : -1, x1.data() + r * bj,
                                                               x2.data() + r * bj, flags.data() + r * bj);
  });
  int64_t ncare = 0;
  for (int64_t r = 0; r < bi; ++r) ncare += row_care[r];
  std::vector<CarefulGeom> geo;
  for (int64_t k = 0; ncare && k < bi * bj; ++k)
    if (flags[k] != T(0)) {
      double l1, l2;
      geo.push_back(careful_gauss_logs<T, G, HS, NORM>(cx, Xb, i0 + k / bj, Xb, j0 + k % bj, l1, l2));
      x1[k] = static_cast<T>(l1);
      x2[k] = static_cast<T>(l2);
    }
  const double mu = row_max(x1.data(), x2.data(), bi * bj);
  if (!(mu > -static_cast<double>(INFINITY))) return;  // every term of the tile is 0
  const T mu_t = static_cast<T>(mu);
  // rows of both blocks to a shift >= mu; f = exp(mu - shift) <= 1 takes this tile's weights to it
  std::vector<double> fi(bi), fj(bj);
  for (int64_t r = 0; r < bi; ++r) {
    lift_shift(shift[i0 + r], mu, e[i0 + r], rad[i0 + r], a + (i0 + r) * D, D);
    fi[r] = gauss_weight(mu_t, shift[i0 + r]);
  }
  for (int64_t jj = 0; !diag && jj < bj; ++jj) {
    lift_shift(shift[j0 + jj], mu, e[j0 + jj], rad[j0 + jj], a + (j0 + jj) * D, D);
    fj[jj] = gauss_weight(mu_t, shift[j0 + jj]);
  }
  std::vector<double> ecol(diag ? 0 : ch.nrow * bj, 0.0), bcol(diag ? 0 : ch.nrow * bj, 0.0);
  for_chunks(ch.nrow, split, [&](int64_t k) {
    const int64_t r0 = ch.begin(k), r1 = r0 + ch.size(k, bi);
    std::vector<T> ecol_t(bj), ccol_t(bj);
    for (int64_t r = r0; r < r1; ++r) {
      T es;
      G bs;
      row_weights<T, NORM>(cx.p.t, mu_t, x1.data() + r * bj, x2.data() + r * bj, flags.data() + r * bj, bj,
                           sp + r * bj, ecol_t.data(), ccol_t.data(), es, bs);
      e[i0 + r] += fi[r] * static_cast<double>(es);
      rad[i0 + r] += fi[r] * static_cast<double>(bs);
      if (!diag)
        for (int64_t jj = 0; jj < bj; ++jj) {
          ecol[k * bj + jj] += static_cast<double>(ecol_t[jj]);
          bcol[k * bj + jj] += static_cast<double>(ccol_t[jj]);
        }
    }
  });
  // a_I += diag(fi) C Z_J and a_J += diag(fj) C^T Z_I, through row-scaled temporaries, by chunks
  auto add_scaled = [&](const at::Tensor& prod, int64_t r0, const double* f) {
    const G* pp = prod.data_ptr<G>();
    for (int64_t r = 0; r < prod.size(0); ++r)
      for (int64_t d = 0; d < D; ++d)
        a[(r0 + r) * D + d] += static_cast<G>(f[r] * static_cast<double>(pp[r * D + d]));
  };
  for_chunks(ch.nrow + ch.ncol, split, [&](int64_t k) {
    if (k < ch.nrow) {
      const int64_t r0 = ch.begin(k), rows = ch.size(k, bi);
      add_scaled(at::mm(S.narrow(0, r0, rows), Xg.narrow(0, j0, bj)), i0 + r0, fi.data() + r0);
    } else {
      const int64_t c0 = ch.begin(k - ch.nrow), cols = ch.size(k - ch.nrow, bj);
      add_scaled(at::mm(S.narrow(1, c0, cols).t(), Xg.narrow(0, i0, bi)), j0 + c0, fj.data() + c0);
    }
  });
  if (!diag)
    for (int64_t jj = 0; jj < bj; ++jj) {
      double es = 0.0, bs = 0.0;
      for (int64_t k = 0; k < ch.nrow; ++k) {
        es += ecol[k * bj + jj];
        bs += bcol[k * bj + jj];
      }
      e[j0 + jj] += fj[jj] * es;
      rad[j0 + jj] += fj[jj] * bs;
    }
  size_t k = 0;
  for (int64_t idx = 0; ncare && idx < bi * bj; ++idx)
    if (flags[idx] != T(0)) {
      const int64_t r = idx / bj, jj = idx % bj, i = i0 + r, j = j0 + jj;
      const double w1 = std::exp(static_cast<double>(x1[idx]) - mu), w2 = std::exp(static_cast<double>(x2[idx]) - mu);
      const CarefulGeom& q = geo[k++];
      careful_gauss_apply<T, G, NORM>(cx, q, Xb, i, Xb, j, fi[r] * w1, fi[r] * w2, a + i * D, rad[i]);
      if (!diag)  // the pair seen from j: the same geometry and log terms
        careful_gauss_apply<T, G, NORM>(cx, q, Xb, j, Xb, i, fj[jj] * w1, fj[jj] * w2, a + j * D, rad[j]);
    }
}


}  // namespace

template <typename T>
void logsum_self_pass(const PassCtx<T>& cx, const Prepared<T>& X, RowOut<T> out) {
  dispatch_pass(cx.p, [&]<int64_t KIND, bool HS, bool NORM, int MODE>() {
    if constexpr (!KindTraits<KIND>::logsum) {
      kind_error(KIND, "logsum_self_pass: a pair-sum kind goes through self_pass");
    } else {
      auto run = [&]<typename G>(const Side<T, G>& side) {
        clear_rows<T, G>(out, X.B, X.n, X.D);
        run_symmetric_tiles(X.B, X.n, [&](int64_t bb, int64_t i0, int64_t i1, int64_t j0, int64_t j1, bool split) {
          sym_tile_lse<T, G, HS, NORM>(cx, side, bb, i0, i1, j0, j1, out, split);
        });
      };
      const bool precise = X.D <= kPreciseMaxD || std::is_same_v<T, double>;
      if (precise) run(X.template side<double>());
      else run(X.template side<T>());
    }
  });
}

template void logsum_self_pass<float>(const PassCtx<float>&, const Prepared<float>&, RowOut<float>);
template void logsum_self_pass<double>(const PassCtx<double>&, const Prepared<double>&, RowOut<double>);

}  // namespace cpu
HSU_ISA_END
}  // namespace hsu
