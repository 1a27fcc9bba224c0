// The CPU kernel's self energies of the pair-sum kinds (every kind but the log-sum one; csrc/cpu/hsu_cpu.cpp
// has the op entry points, hsu_cpu_internal.h what the engines share): symmetric tiles. Each unordered pair of
// 256-row blocks is one tile: its dot products come from one BLAS call, the pair terms are applied while the
// tile is in cache, and two more BLAS calls add coefficient-tile @ rows to both blocks' gradient accumulators.
// Tiles are scheduled as a round-robin tournament (a round never gives two tiles the same block), which keeps
// the result deterministic without atomics; the schedule (run_symmetric_tiles) serves the log-sum self engine
// (hsu_cpu_logsum.cpp) too. Up to D = kPreciseMaxD the dot products and row statistics are float64 (nearly
// parallel rows on a low-dimensional sphere keep their digits; the products are cheap there). Measured at
// N = 4096 on 2 cores: 2x faster than the direct cross engine even at D = 1-3.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/ParallelGuard.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <exception>
#include <type_traits>
#include <utility>
#include <vector>

#include "hsu_cpu_internal.h"

namespace hsu {
HSU_ISA_BEGIN
namespace cpu {

namespace {

// One tile (rows [i0, i1) against rows [j0, j1), or a block against itself) of batch entry bb. G is the
// type of the products: double for D <= kPreciseMaxD (the products are cheap there, and nearly parallel
// rows, common among points on a low-dimensional sphere, keep their digits), else T. `split`: cut the tile
// into chunks run on every thread (see kSplitRows); else it is one chunk, on this thread.
template <typename T, typename G, int64_t KIND, bool HS, bool NORM, int MODE>
void sym_tile(const PassCtx<T>& cx, const Side<T, G>& X, int64_t bb, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
              RowOut<T> out, bool split) {
  const int64_t bi = i1 - i0, bj = j1 - j0, n = X.n, D = X.D;
  const bool diag = i0 == j0;
  const at::Tensor Xg = X.xg[bb];
  // cosines or raw products, in G; the coefficients overwrite them (in G too: see RowOut)
  at::Tensor S = at::empty({bi, bj}, Xg.options());
  G* sp = S.data_ptr<G>();
  std::vector<T> flags(bi * bj);
  const Chunks ch(bi, bj, diag, split);
  // per row chunk: its column sums, added in chunk order below
  std::vector<double> ecol(diag ? 0 : ch.nrow * bj, 0.0), bcol(diag ? 0 : ch.nrow * bj, 0.0);
  const Side<T, G> Xb{X.xg, X.z, X.w + bb * n * D, NORM ? X.r + bb * n : nullptr, NORM ? X.a + bb * n : nullptr,
                      NORM ? nullptr : X.q + bb * n, NORM ? nullptr : X.qg + bb * n, n, D};
  double* e = out.e + bb * n;
  double* rad = out.rad + bb * n;
  G* a = out.template acc<G>() + bb * n * D;
  const G* qj = NORM ? nullptr : Xb.qg + j0;
  std::vector<int64_t> row_care(bi, 0);  // careful pairs per row: the fix-up scans only rows that have some
  for_chunks(ch.nrow, split, [&](int64_t k) {
    const int64_t r0 = ch.begin(k), r1 = r0 + ch.size(k, bi);
    tile_products<G>(S, Xg, i0, j0, bj, r0, r1 - r0);
    std::vector<T> ecol_t(bj), ccol_t(bj);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = i0 + r;
      T es;
      G bs;
      row_care[r] = row_terms_checked<T, G, KIND, HS, NORM, MODE>(cx, sp + r * bj, NORM ? G(0) : Xb.qg[i], qj, bj,
                                                                  diag ? r : -1, sp + r * bj, flags.data() + r * bj,
                                                                  ecol_t.data(), ccol_t.data(), es, bs);
      e[i] += static_cast<double>(es);
      rad[i] += static_cast<double>(bs);
      if (!diag)
        for (int64_t jj = 0; jj < bj; ++jj) {
          ecol[k * bj + jj] += static_cast<double>(ecol_t[jj]);
          bcol[k * bj + jj] += static_cast<double>(ccol_t[jj]);
        }
    }
  });
  // a_I += C Z_J by row chunks of C; a_J += C^T Z_I by column chunks of C: each chunk writes its own rows.
  at::Tensor A = at::from_blob(a, {n, D}, Xg.options());
  for_chunks(ch.nrow + ch.ncol, split, [&](int64_t k) {
    if (k < ch.nrow) {
      const int64_t r0 = ch.begin(k), rows = ch.size(k, bi);
      A.narrow(0, i0 + r0, rows).addmm_(S.narrow(0, r0, rows), Xg.narrow(0, j0, bj));
    } else {
      const int64_t c0 = ch.begin(k - ch.nrow), cols = ch.size(k - ch.nrow, bj);
      A.narrow(0, j0 + c0, cols).addmm_(S.narrow(1, c0, cols).t(), Xg.narrow(0, i0, bi));
    }
  });
  if (!diag)
    for (int64_t jj = 0; jj < bj; ++jj) {
      double es = 0.0, bs = 0.0;
      for (int64_t k = 0; k < ch.nrow; ++k) {
        es += ecol[k * bj + jj];
        bs += bcol[k * bj + jj];
      }
      e[j0 + jj] += es;
      rad[j0 + jj] += bs;
    }
  int64_t ncare = 0;
  for (int64_t r = 0; r < bi; ++r) ncare += row_care[r];
  if (!ncare) return;
  // The careful pairs: in a diagonal tile both orders (i, j) and (j, i) are entries of the tile, each
  // giving its own row; in an off-diagonal tile the entry gives both rows.
  double unused = 0.0;
  for (int64_t r = 0; r < bi; ++r)
    for (int64_t jj = 0; row_care[r] && jj < bj; ++jj)
      if (flags[r * bj + jj] != T(0)) {
        const int64_t i = i0 + r, j = j0 + jj;
        const double ep = careful_pair<T, G, KIND, HS, NORM>(cx, Xb, i, Xb, j, a + i * D, diag ? nullptr : a + j * D,
                                                             rad[i], diag ? unused : rad[j]);
        e[i] += ep;
        if (!diag) e[j] += ep;
      }
}

template <typename T, typename G, int64_t KIND, bool HS, bool NORM, int MODE>
void gemm_self_symmetric(const PassCtx<T>& cx, const Side<T, G>& X, int64_t B, RowOut<T> out) {
  clear_rows<T, G>(out, B, X.n, X.D);
  run_symmetric_tiles(B, X.n, [&](int64_t bb, int64_t i0, int64_t i1, int64_t j0, int64_t j1, bool split) {
    sym_tile<T, G, KIND, HS, NORM, MODE>(cx, X, bb, i0, i1, j0, j1, out, split);
  });
}

}  // namespace

// The tile schedule of both self engines (this file and hsu_cpu_logsum.cpp), see kSymBlock in
// hsu_cpu_internal.h: a round-robin tournament of the row blocks.
void run_symmetric_tiles(int64_t B, int64_t n, const SymTileFn& tile) {
  const int64_t nblk = (n + kSymBlock - 1) / kSymBlock;
  const int64_t m = nblk + (nblk & 1);  // teams, with a bye when nblk is odd
  auto block = [&](int64_t k) { return std::make_pair(k * kSymBlock, std::min(n, (k + 1) * kSymBlock)); };
  // Few tiles: the tiles run one after the other and each spreads its chunks over every thread. Otherwise
  // tiles run in parallel, one thread each. The choice depends on the shape only (see kSplitRows).
  const int64_t ntiles = B * nblk * (nblk + 1) / 2;
  const bool inner_parallel = ntiles < kFewTiles;
  auto run = [&](int64_t bb, int64_t I, int64_t J) {
    WorkerScope worker;
    const auto [i0, i1] = block(I);
    const auto [j0, j1] = block(J);
    tile(bb, i0, i1, j0, j1, inner_parallel);
  };
  // The tiles in round order. Round 0: every block with itself. Rounds 1..m-1 (the circle method):
  // block 0 stays, the others rotate; position k meets position m-1-k.
  struct Tile {
    int64_t bb, I, J;
  };
  std::vector<std::vector<Tile>> rounds(m);
  for (int64_t bb = 0; bb < B; ++bb)
    for (int64_t I = 0; I < nblk; ++I) rounds[0].push_back({bb, I, I});
  const int64_t half = m / 2;
  for (int64_t r = 0; r + 1 < m; ++r) {
    auto team = [&](int64_t pos) { return pos == 0 ? int64_t(0) : 1 + (pos - 1 + r) % (m - 1); };
    for (int64_t bb = 0; bb < B; ++bb)
      for (int64_t k = 0; k < half; ++k) {
        const int64_t I = team(k), J = team(m - 1 - k);
        if (I < nblk && J < nblk) rounds[r + 1].push_back({bb, std::min(I, J), std::max(I, J)});  // else the bye
      }
  }
#ifdef _OPENMP
  // With OpenMP, no barrier between rounds: each tile is a task that depends on the previous tiles of
  // its two blocks (depend(inout) on one object per block, in creation order = round order). Each row
  // still receives its contributions in round order, so the result is the same as with the barriers,
  // and a slow tile no longer holds up every thread at the end of its round.
  const int nthreads = at::get_num_threads();
  if (nthreads > 1 && !inner_parallel && !at::in_parallel_region()) {
    std::vector<char> blk(B * nblk);
    char* dep = blk.data();
    std::exception_ptr error;
    std::atomic_flag failed = ATOMIC_FLAG_INIT;
#pragma omp parallel num_threads(nthreads)
#pragma omp single
    for (const auto& round : rounds)
      for (const Tile& t : round) {
        // (used by the depend clause only, which GCC 12's -Wunused-variable does not see outside templates)
        [[maybe_unused]] char* di = dep + t.bb * nblk + t.I;
        [[maybe_unused]] char* dj = dep + t.bb * nblk + t.J;
#pragma omp task firstprivate(t) depend(inout : di[0], dj[0])
        {
          c10::ParallelGuard in_parallel(true);
          try {
            run(t.bb, t.I, t.J);
          } catch (...) {
            if (!failed.test_and_set()) error = std::current_exception();
          }
        }
      }
    if (error) std::rethrow_exception(error);
    return;
  }
#endif
  if (inner_parallel) {
    for (const auto& round : rounds)
      for (const Tile& t : round) run(t.bb, t.I, t.J);
    return;
  }
  for (const auto& round : rounds)
    at::parallel_for(0, static_cast<int64_t>(round.size()), 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) run(round[t].bb, round[t].I, round[t].J);
    });
}

template <typename T>
void self_pass(const PassCtx<T>& cx, const Prepared<T>& X, RowOut<T> out) {
  dispatch_pass(cx.p, [&]<int64_t KIND, bool HS, bool NORM, int MODE>() {
    if constexpr (KindTraits<KIND>::logsum) {
      kind_error(KIND, "self_pass: a log-sum kind goes through logsum_self_pass");
    } else {
      const bool precise = X.D <= kPreciseMaxD || std::is_same_v<T, double>;
      if (precise) gemm_self_symmetric<T, double, KIND, HS, NORM, MODE>(cx, X.template side<double>(), X.B, out);
      else gemm_self_symmetric<T, T, KIND, HS, NORM, MODE>(cx, X.template side<T>(), X.B, out);
    }
  });
}

template void self_pass<float>(const PassCtx<float>&, const Prepared<float>&, RowOut<float>);
template void self_pass<double>(const PassCtx<double>&, const Prepared<double>&, RowOut<double>);

}  // namespace cpu
HSU_ISA_END
}  // namespace hsu
