// The C++ CPU kernel: energy and gradient fused in one pass over tiles, multi-threaded with
// at::parallel_for, no N x N buffer (docs/spec.md §6).
//
// Self energies (every D): symmetric tiles. Each unordered pair of 256-row blocks is one tile: its dot
// products come from one BLAS call, the pair terms are applied while the tile is in cache, and two more
// BLAS calls add coefficient-tile @ rows to both blocks' gradient accumulators. Tiles are scheduled as a
// round-robin tournament (a round never gives two tiles the same block), which keeps the result
// deterministic without atomics. Up to D = kPreciseMaxD the dot products and row statistics are float64
// (nearly parallel rows on a low-dimensional sphere keep their digits; the products are cheap there).
// Measured at N = 4096 on 2 cores: 2x faster than the direct engine below even at D = 1-3.
//
// Cross energies (rows of x against rows of y), two engines chosen by D:
//  * direct (D <= kDirectMaxD): each row streams the columns of a transposed copy of Y in chunks; dot
//    products, pair terms and accumulation are loops the compiler vectorizes (omp simd);
//  * tiled GEMM (larger D): (row block, column block) tiles with BLAS products, as above but one-sided.
//
// Determinism: work is split into fixed blocks (independent of the thread count), each row's sums are
// accumulated in a fixed order, and the per-row energies are reduced serially in double.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/ParallelGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <vector>

#include "../hsu_checks.h"
#include "../hsu_pair.h"
#include "hsu_cpu_small.h"

namespace hsu {
namespace {

constexpr int64_t kDirectMaxD = 32;  // cross energies: direct engine up to this D
constexpr int64_t kPreciseMaxD = 32;  // dot products and row statistics in double up to this D
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

// Per-row outputs of one pass: e_i = sum_j psi_ij (double), a_i = sum_j cj w_j, b_i = sum_j ci.
template <typename T>
struct RowOut {
  double* e;
  T* a;
  T* b;
};

// Per-pair terms with kind / half-space / normalize / exponent mode fixed at compile time, so each
// instantiation of the inner loop has no branches on them and vectorizes.
template <typename T, int64_t KIND, bool HS, bool NORM, int MODE, typename G>
inline void pair_fixed(const Params<T>& p, G dot, G si, G sj, T& e, T& cj, T& ci) {
  pair_terms_k<KIND, HS, NORM, MODE>(p.s, p.t, p.eps_ang, dot, si, sj, e, cj, ci);
}

// Direct engine over rows [i0, i1) of X against all n2 rows of Y, given Y transposed (YT: [D, n2]).
template <typename T, int64_t KIND, bool HS, bool NORM, int MODE>
void direct_rows(const Params<T>& p, const T* X, const double* sx, int64_t i0, int64_t i1, const T* YT,
                 const double* sy, int64_t n2, int64_t D, bool self, RowOut<T> out) {
  // Dot products and row statistics in double: exact products of float inputs, so 2 - 2g does not lose
  // the digits that matter for nearly parallel rows (points on a sphere, D = 3).
  double dot[kChunk];
  T cj[kChunk];
  std::vector<T> acc(D);
  for (int64_t i = i0; i < i1; ++i) {
    const T* xi = X + i * D;
    const double si = sx[i];
    std::fill(acc.begin(), acc.end(), T(0));
    double erow = 0.0;
    T brow = T(0);
    for (int64_t j0 = 0; j0 < n2; j0 += kChunk) {
      const int64_t m = std::min(kChunk, n2 - j0);
      for (int64_t jj = 0; jj < m; ++jj) dot[jj] = 0.0;
      for (int64_t d = 0; d < D; ++d) {
        const double xd = xi[d];
        const T* yt = YT + d * n2 + j0;
#pragma omp simd
        for (int64_t jj = 0; jj < m; ++jj) dot[jj] += xd * static_cast<double>(yt[jj]);
      }
      // Index of the diagonal inside this chunk, or -1: that pair is not a pair and must contribute 0
      // (selected away, never subtracted: its value may be infinite when eps_norm = 0).
      const int64_t skip = (self && i >= j0 && i < j0 + m) ? i - j0 : -1;
      T esum = T(0), bsum = T(0);
      const double* syc = sy + j0;
#pragma omp simd reduction(+ : esum, bsum)
      for (int64_t jj = 0; jj < m; ++jj) {
        T e, c, ci;
        pair_fixed<T, KIND, HS, NORM, MODE>(p, dot[jj], si, syc[jj], e, c, ci);
        const bool keep = jj != skip;
        esum += keep ? e : T(0);
        bsum += keep ? ci : T(0);
        cj[jj] = keep ? c : T(0);
      }
      erow += static_cast<double>(esum);
      brow += bsum;
      for (int64_t d = 0; d < D; ++d) {
        const T* yt = YT + d * n2 + j0;
        T s = T(0);
#pragma omp simd reduction(+ : s)
        for (int64_t jj = 0; jj < m; ++jj) s += cj[jj] * yt[jj];
        acc[d] += s;
      }
    }
    out.e[i] = erow;
    if (out.b) out.b[i] = brow;
    std::copy(acc.begin(), acc.end(), out.a + i * D);
  }
}

// What a task that calls ATen ops on a worker thread of at::parallel_for needs:
//  * the dispatcher state of the calling op: a worker thread starts with the autograd keys included
//    (thread-local state is not carried over), so an out= product of a view of an input that requires
//    grad would be refused there, and views would be tracked. The op runs below autograd; so do its tasks.
//  * a BLAS that runs on this one thread: torch's MKL has its own thread pool, which does not see ATen's
//    OpenMP region and oversubscribes the cores (measured 50x slower on 2 cores). MKL's thread-local
//    setting does it. We bind its Fortran-convention entry point (argument by pointer), the one
//    libtorch_cpu exports under every spelling; it is a weak symbol, null where torch has no MKL.
extern "C" int mkl_set_num_threads_local_(const int*) __attribute__((weak));

struct WorkerScope {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  bool pinned;
  int previous = 0;
  WorkerScope() : pinned(mkl_set_num_threads_local_ != nullptr) {
    const int one = 1;
    if (pinned) previous = mkl_set_num_threads_local_(&one);
  }
  ~WorkerScope() {
    if (pinned) mkl_set_num_threads_local_(&previous);
  }
};

// GEMM engine over rows [i0, i1) of X (a [n1, D] tensor) against all rows of Y ([n2, D]), one thread
// (called inside a task that holds a WorkerScope).
template <typename T, int64_t KIND, bool HS, bool NORM, int MODE>
void gemm_rows(const Params<T>& p, const at::Tensor& X, const T* sx, int64_t i0, int64_t i1,
               const at::Tensor& Y, const T* sy, bool self, RowOut<T> out) {
  const int64_t n2 = Y.size(0), D = X.size(1);
  const int64_t bi = i1 - i0;
  at::Tensor xi = X.narrow(0, i0, bi);
  at::Tensor S = at::empty({bi, std::min(kColBlock, n2)}, X.options());
  at::Tensor a = at::zeros({bi, D}, X.options());
  std::vector<double> erow(bi, 0.0);
  std::vector<T> brow(bi, T(0));
  for (int64_t j0 = 0; j0 < n2; j0 += kColBlock) {
    const int64_t m = std::min(kColBlock, n2 - j0);
    at::Tensor yj = Y.narrow(0, j0, m);
    at::Tensor St = S.narrow(1, 0, m);
    at::mm_out(St, xi, yj.t());
    T* sp = S.data_ptr<T>();
    const int64_t ld = S.stride(0);
    for (int64_t r = 0; r < bi; ++r) {
      const int64_t i = i0 + r;
      const T si = sx[i];
      T* row = sp + r * ld;
      const T* syc = sy + j0;
      const int64_t skip = (self && i >= j0 && i < j0 + m) ? i - j0 : -1;
      T esum = T(0), bsum = T(0);
#pragma omp simd reduction(+ : esum, bsum)
      for (int64_t jj = 0; jj < m; ++jj) {
        T e, c, ci;
        pair_fixed<T, KIND, HS, NORM, MODE>(p, row[jj], si, syc[jj], e, c, ci);
        const bool keep = jj != skip;
        esum += keep ? e : T(0);
        bsum += keep ? ci : T(0);
        row[jj] = keep ? c : T(0);
      }
      erow[r] += static_cast<double>(esum);
      brow[r] += bsum;
    }
    a.addmm_(St, yj);
  }
  const T* ap = a.data_ptr<T>();
  std::copy(ap, ap + bi * D, out.a + i0 * D);
  for (int64_t r = 0; r < bi; ++r) {
    out.e[i0 + r] = erow[r];
    if (out.b) out.b[i0 + r] = brow[r];
  }
}

// Symmetric GEMM engine for a self energy: each unordered pair of row blocks (I, J) is one tile, computed
// once and applied to both sides (a_I += C Z_J, a_J += C^T Z_I, with Z = u rows when normalizing, else
// w rows), which halves the per-pair math and saves a quarter of the products. Tiles are scheduled as a
// round-robin tournament: within a round every block appears in at most one tile, so tiles of a round
// run in parallel without sharing rows, and each row receives its contributions in round order: the
// result does not depend on the thread count.
// 128-512 measured within 5% at N=4096, D=128 on one thread, 128 15% slower; on 2 threads (2026-11-25)
// 384 and 512 were within the machine's noise of 256, 128 slower.
constexpr int64_t kSymBlock = 256;

// Few tiles (small N, one to three per matrix, as in most layers of a network) would leave threads idle if
// each tile ran on one thread. Such a tile is cut into chunks of kSplitRows rows (and, for the second
// side's product, columns) spread over the threads, every BLAS call on one chunk and one thread. Earlier
// each BLAS call ran on every thread instead, but MKL's threaded GEMM rounds differently for different
// thread counts (measured: [100 x 64] @ [64 x 100] in float32 differs in the last bits between 1 and 4
// threads), so the result depended on the thread count. The choice between the two modes depends only
// on the shape (kFewTiles), and the chunks do not depend on the thread count, so the same calls make the
// same sums on any number of threads. Chunk size, measured on 2 threads (2026-12-01, a loaded machine:
// paired runs, median ratios): 128 rows within noise of MKL's own threading at N = 256, D = 576 and faster
// at N = 100 (one chunk: no threads started for a tiny tile); 64 rows 4-16% slower there, 32 rows slower still.
constexpr int64_t kSplitRows = 128;
constexpr int64_t kFewTiles = 4;  // fewer tiles than this (all matrices of a batch together): split them

// Runs f(k) for k in [0, n): on every thread (one thread's BLAS per chunk) when `split`, else here.
template <typename F>
void for_chunks(int64_t n, bool split, const F& f) {
  if (!split) {
    for (int64_t k = 0; k < n; ++k) f(k);
    return;
  }
  at::parallel_for(0, n, 1, [&](int64_t k0, int64_t k1) {
    WorkerScope worker;
    for (int64_t k = k0; k < k1; ++k) f(k);
  });
}

// Rows [r0, r1) of a tile (tile rows start at i0, columns at j0, bj columns): their dot products (one BLAS
// call), the pair terms, the coefficient rows into C (ldc = bj), the row sums into e/b, and the column sums
// of these rows into ecol/bcol (off-diagonal tiles).
template <typename T, typename G, int64_t KIND, bool HS, bool NORM, int MODE>
void sym_tile_rows(const Params<T>& p, const at::Tensor& Xg, const G* sg, const T* inv_sx, int64_t i0, int64_t j0,
                   int64_t bj, int64_t r0, int64_t r1, bool diag, double* e, T* b, at::Tensor& C, double* ecol,
                   T* bcol) {
  at::Tensor Cr = C.narrow(0, r0, r1 - r0);
  at::Tensor S;  // raw dot products, in G (when G is T, computed in place in C and overwritten by it)
  if constexpr (std::is_same_v<G, T>) {
    S = Cr;
    at::mm_out(S, Xg.narrow(0, i0 + r0, r1 - r0), Xg.narrow(0, j0, bj).t());
  } else {
    S = at::mm(Xg.narrow(0, i0 + r0, r1 - r0), Xg.narrow(0, j0, bj).t());
  }
  const G* sp = S.data_ptr<G>();
  T* cp = C.data_ptr<T>();
  std::vector<T> ecol_t(bj);
  const G* syc = sg + j0;
  const T* nrm = inv_sx + j0;  // 1 / r_j
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t i = i0 + r;
    const G si = sg[i];
    const G* row = sp + (r - r0) * bj;
    T* crow = cp + r * bj;
    const int64_t skip = diag ? r : -1;
    T esum = T(0), bsum = T(0);
#pragma omp simd reduction(+ : esum, bsum)
    for (int64_t jj = 0; jj < bj; ++jj) {
      T ev, c, ci;
      pair_terms_k<KIND, HS, NORM, MODE>(p.s, p.t, p.eps_ang, row[jj], si, syc[jj], ev, c, ci);
      const bool keep = jj != skip;
      ev = keep ? ev : T(0);
      ci = keep ? ci : T(0);
      esum += ev;
      bsum += ci;
      ecol_t[jj] = ev;
      if (!diag) bcol[jj] += ci;
      // normalized: c = phi'(g) r_j; both sides use phi'(g) = c n_j with the u rows Z
      crow[jj] = keep ? (NORM ? c * nrm[jj] : c) : T(0);
    }
    e[i] += static_cast<double>(esum);
    if (b) b[i] += bsum;
    if (!diag)
      for (int64_t jj = 0; jj < bj; ++jj) ecol[jj] += static_cast<double>(ecol_t[jj]);
  }
}

// One tile (rows [i0, i1) against rows [j0, j1), or a block against itself). G is the type of the dot
// products and row statistics: double for D <= kPreciseMaxD (the products are cheap there, and nearly
// parallel rows, common among points on a low-dimensional sphere, keep their digits), else T. `split`:
// cut the tile into chunks run on every thread (see kSplitRows); else it is one chunk, on this thread.
template <typename T, typename G, int64_t KIND, bool HS, bool NORM, int MODE>
void sym_tile(const Params<T>& p, const at::Tensor& Xg, const at::Tensor& Z, const G* sg, const T* inv_sx,
              int64_t i0, int64_t i1, int64_t j0, int64_t j1, double* e, at::Tensor& A, T* b, bool split) {
  const int64_t bi = i1 - i0, bj = j1 - j0;
  const bool diag = i0 == j0;
  at::Tensor C = at::empty({bi, bj}, Z.options());  // coefficients, in T
  const int64_t piece = split ? kSplitRows : std::max(bi, bj);
  const int64_t nrow = (bi + piece - 1) / piece;
  const int64_t ncol = diag ? 0 : (bj + piece - 1) / piece;
  // per row chunk: its column sums (energies in double, b coefficients in T), added in chunk order below
  std::vector<double> ecol(diag ? 0 : nrow * bj, 0.0);
  std::vector<T> bcol(diag ? 0 : nrow * bj, T(0));
  for_chunks(nrow, split, [&](int64_t k) {
    sym_tile_rows<T, G, KIND, HS, NORM, MODE>(p, Xg, sg, inv_sx, i0, j0, bj, k * piece,
                                              std::min(bi, (k + 1) * piece), diag, e, b, C,
                                              diag ? nullptr : ecol.data() + k * bj,
                                              diag ? nullptr : bcol.data() + k * bj);
  });
  // a_I += C Z_J by row chunks of C; a_J += C^T Z_I by column chunks of C: each chunk writes its own rows.
  for_chunks(nrow + ncol, split, [&](int64_t k) {
    if (k < nrow) {
      const int64_t r0 = k * piece, rows = std::min(bi, r0 + piece) - r0;
      A.narrow(0, i0 + r0, rows).addmm_(C.narrow(0, r0, rows), Z.narrow(0, j0, bj));
    } else {
      const int64_t c0 = (k - nrow) * piece, cols = std::min(bj, c0 + piece) - c0;
      A.narrow(0, j0 + c0, cols).addmm_(C.narrow(1, c0, cols).t(), Z.narrow(0, i0, bi));
    }
  });
  if (!diag) {
    for (int64_t jj = 0; jj < bj; ++jj) {
      double es = 0.0;
      T bs = T(0);
      for (int64_t k = 0; k < nrow; ++k) {
        es += ecol[k * bj + jj];
        bs += bcol[k * bj + jj];
      }
      e[j0 + jj] += es;
      if (b) b[j0 + jj] += bs;
    }
  }
}

template <typename T, typename G, int64_t KIND, bool HS, bool NORM, int MODE>
void gemm_self_symmetric(const Params<T>& p, const at::Tensor& X, const at::Tensor& sx, const at::Tensor& sd,
                         double* e, T* a, T* b) {
  const int64_t B = X.size(0), n = X.size(1), D = X.size(2);
  const int64_t nblk = (n + kSymBlock - 1) / kSymBlock;
  const int64_t m = nblk + (nblk & 1);  // teams, with a bye when nblk is odd
  std::fill(e, e + B * n, 0.0);
  if (b) std::fill(b, b + B * n, T(0));
  at::Tensor A = at::from_blob(a, {B, n, D}, X.options());
  A.zero_();
  const at::Tensor Xg = std::is_same_v<G, T> ? X : X.to(c10::CppTypeToScalarType<G>::value);
  const at::Tensor sg = std::is_same_v<G, T> ? sx : sd;
  const at::Tensor Z = NORM ? X * sx.unsqueeze(-1) : X;  // u rows (normalized) or w rows
  const at::Tensor inv = NORM ? sx.reciprocal().contiguous() : sx;
  auto block = [&](int64_t k) { return std::make_pair(k * kSymBlock, std::min(n, (k + 1) * kSymBlock)); };
  // Few tiles: the tiles run one after the other and each spreads its chunks over every thread. Otherwise
  // tiles run in parallel, one thread each. The choice depends on the shape only (see kSplitRows).
  const int64_t ntiles = B * nblk * (nblk + 1) / 2;
  const bool inner_parallel = ntiles < kFewTiles;
  auto run = [&](int64_t bb, int64_t I, int64_t J) {
    WorkerScope worker;
    at::Tensor Ab = A[bb];
    const auto [i0, i1] = block(I);
    const auto [j0, j1] = block(J);
    sym_tile<T, G, KIND, HS, NORM, MODE>(p, Xg[bb], Z[bb], sg.data_ptr<G>() + bb * n, inv.data_ptr<T>() + bb * n,
                                         i0, i1, j0, j1, e + bb * n, Ab, b ? b + bb * n : nullptr,
                                         inner_parallel);
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
        char* di = dep + t.bb * nblk + t.I;
        char* dj = dep + t.bb * nblk + t.J;
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

// Row statistics in double for the direct engine (see direct_rows).
struct RowStats {
  const double* x;
  const double* y;
};

// Row by row, without a float64 copy of X (at N = 100,000, D = 512 that copy alone is 400 MB).
template <typename T>
at::Tensor double_stats(const at::Tensor& X, double eps_norm, bool normalize) {
  const int64_t rows = X.size(0) * X.size(1), D = X.size(2);
  at::Tensor out = at::empty({X.size(0), X.size(1)}, X.options().dtype(at::kDouble));
  const T* xp = X.data_ptr<T>();
  double* op = out.data_ptr<double>();
  at::parallel_for(0, rows, 1024, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      double acc = 0.0;
      for (int64_t d = 0; d < D; ++d) acc += static_cast<double>(xp[r * D + d]) * static_cast<double>(xp[r * D + d]);
      op[r] = normalize ? 1.0 / std::sqrt(acc + eps_norm) : acc;
    }
  });
  return out;
}

// One pass for every batch entry: rows of X[b] against rows of Y[b]. Tasks are (batch, row block) pairs.
template <typename T, int64_t KIND, bool HS, bool NORM, int MODE>
void row_pass_fixed(const Params<T>& p, const at::Tensor& X, const at::Tensor& sx, const at::Tensor& Y,
                    const at::Tensor& sy, const RowStats& st, bool self, double* e, T* a, T* b) {
  const int64_t B = X.size(0), n1 = X.size(1), n2 = Y.size(1), D = X.size(2);
  const bool direct = D <= kDirectMaxD;
  if (self) {
    if (D <= kPreciseMaxD) {
      const at::Tensor sd = at::from_blob(const_cast<double*>(st.x), {B, n1}, X.options().dtype(at::kDouble));
      gemm_self_symmetric<T, double, KIND, HS, NORM, MODE>(p, X, sx, sd, e, a, b);
    } else {
      gemm_self_symmetric<T, T, KIND, HS, NORM, MODE>(p, X, sx, sx, e, a, b);
    }
    return;
  }
  at::Tensor YT;
  if (direct) YT = Y.transpose(1, 2).contiguous();  // [B, D, n2]: columns contiguous per coordinate
  const int64_t rb = direct ? kRowBlock : kGemmRowBlock;
  const int64_t nblk = (n1 + rb - 1) / rb;
  at::parallel_for(0, B * nblk, 1, [&](int64_t t0, int64_t t1) {
    WorkerScope worker;
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t bb = task / nblk, blk = task % nblk;
      const int64_t i0 = blk * rb, i1 = std::min(n1, i0 + rb);
      RowOut<T> out{e + bb * n1, a + bb * n1 * D, b ? b + bb * n1 : nullptr};
      if (direct) {
        direct_rows<T, KIND, HS, NORM, MODE>(p, X.data_ptr<T>() + bb * n1 * D, st.x + bb * n1, i0, i1,
                                             YT.data_ptr<T>() + bb * D * n2, st.y + bb * n2, n2, D, self, out);
      } else {
        gemm_rows<T, KIND, HS, NORM, MODE>(p, X[bb], sx.data_ptr<T>() + bb * n1, i0, i1, Y[bb],
                                           sy.data_ptr<T>() + bb * n2, self, out);
      }
    }
  });
}

template <typename T, int64_t KIND, int MODE>
void row_pass_kind(const Params<T>& p, const at::Tensor& X, const at::Tensor& sx, const at::Tensor& Y,
                   const at::Tensor& sy, const RowStats& st, bool self, double* e, T* a, T* b) {
  if (p.normalize) {
    if (p.half_space) row_pass_fixed<T, KIND, true, true, MODE>(p, X, sx, Y, sy, st, self, e, a, b);
    else row_pass_fixed<T, KIND, false, true, MODE>(p, X, sx, Y, sy, st, self, e, a, b);
  } else if constexpr (KIND == kRiesz || KIND == kLog || KIND == kGaussian) {
    if (p.half_space) row_pass_fixed<T, KIND, true, false, MODE>(p, X, sx, Y, sy, st, self, e, a, b);
    else row_pass_fixed<T, KIND, false, false, MODE>(p, X, sx, Y, sy, st, self, e, a, b);
  } else {
    TORCH_CHECK_VALUE(false, "angular kinds need normalize=True");
  }
}

// The exponent of x^(-p) (s/2 for Riesz, s for angular) picks a loop without exp/log where it can.
template <typename T, int64_t KIND>
void row_pass_pow(const Params<T>& p, const at::Tensor& X, const at::Tensor& sx, const at::Tensor& Y,
                  const at::Tensor& sy, const RowStats& st, bool self, double* e, T* a, T* b) {
  switch (pow_mode(KIND == kRiesz ? T(0.5) * p.s : p.s)) {
    case kPowRsqrt: return row_pass_kind<T, KIND, kPowRsqrt>(p, X, sx, Y, sy, st, self, e, a, b);
    case kPowRecip: return row_pass_kind<T, KIND, kPowRecip>(p, X, sx, Y, sy, st, self, e, a, b);
    case kPowRecip2: return row_pass_kind<T, KIND, kPowRecip2>(p, X, sx, Y, sy, st, self, e, a, b);
    default: return row_pass_kind<T, KIND, kPowGeneral>(p, X, sx, Y, sy, st, self, e, a, b);
  }
}

template <typename T>
void row_pass(const Params<T>& p, const at::Tensor& X, const at::Tensor& sx, const at::Tensor& Y,
              const at::Tensor& sy, const RowStats& st, bool self, double* e, T* a, T* b) {
  switch (p.kind) {
    case kRiesz: return row_pass_pow<T, kRiesz>(p, X, sx, Y, sy, st, self, e, a, b);
    case kLog: return row_pass_kind<T, kLog, kPowGeneral>(p, X, sx, Y, sy, st, self, e, a, b);
    case kAngular: return row_pass_pow<T, kAngular>(p, X, sx, Y, sy, st, self, e, a, b);
    case kAngularLog: return row_pass_kind<T, kAngularLog, kPowGeneral>(p, X, sx, Y, sy, st, self, e, a, b);
    default: return row_pass_kind<T, kGaussian, kPowGeneral>(p, X, sx, Y, sy, st, self, e, a, b);
  }
}

// Squared row norms and row statistics; refuses NaN/Inf (also when called from a compiled graph, where
// the Python-side check cannot run).
template <typename T>
void row_statistics(const Params<T>& p, const at::Tensor& X, T eps_norm, const char* name, at::Tensor& sq,
                    at::Tensor& st) {
  const int64_t rows = X.size(0) * X.size(1), D = X.size(2);
  sq = at::empty({X.size(0), X.size(1)}, X.options());
  st = at::empty_like(sq);
  const T* xp = X.data_ptr<T>();
  T* sqp = sq.data_ptr<T>();
  T* stp = st.data_ptr<T>();
  at::parallel_for(0, rows, 1024, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T acc = T(0);
      for (int64_t d = 0; d < D; ++d) acc += xp[r * D + d] * xp[r * D + d];
      sqp[r] = acc;
      stp[r] = row_stat(p, acc, eps_norm);
    }
  });
  TORCH_CHECK_VALUE(at::isfinite(sq).all().item<bool>(), name,
                    " contains NaN or Inf (or a row whose squared norm overflows)");
  if (eps_norm == T(0) && p.normalize) {
    TORCH_CHECK_VALUE(!(sq == 0).any().item<bool>(), name,
                      " has a zero row, which has no direction when eps_norm=0");
  }
}

// dE/dw from the accumulators, in place over `a`, plus the half-space self terms; returns their energy.
// The epilogue runs in double (see row_grad), with the double row statistics `sd`.
template <typename T>
std::vector<double> finish_rows(const Params<T>& p, const at::Tensor& X, const at::Tensor& sd, at::Tensor& a,
                                const T* b, double scale, double eps_norm, bool with_diag) {
  const int64_t B = X.size(0), n = X.size(1), D = X.size(2);
  std::vector<double> ediag(B * n, 0.0);
  const T* xp = X.data_ptr<T>();
  const double* sdp = sd.data_ptr<double>();
  T* ap = a.data_ptr<T>();
  const Params<double> pd{p.kind, static_cast<double>(p.s), static_cast<double>(p.t),
                          static_cast<double>(p.eps_ang), p.half_space, p.normalize};
  at::parallel_for(0, B * n, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      double ed = 0.0, k = 0.0;
      if (with_diag) {
        double sq = 0.0;
        for (int64_t d = 0; d < D; ++d) sq += static_cast<double>(xp[r * D + d]) * static_cast<double>(xp[r * D + d]);
        diag_term(pd, sq, eps_norm, ed, k);
      }
      ediag[r] = ed;
      row_grad<T, double>(p, xp + r * D, sdp[r], ap + r * D, b ? static_cast<double>(b[r]) : 0.0, scale, k, D,
                          ap + r * D);
    }
  });
  return ediag;
}

at::ScalarType out_dtype(const at::Tensor& w) {
  return w.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor> energy_grad_cpu(const at::Tensor& w_in, int64_t kind, double s, double t,
                                                   double eps_norm, double eps_ang, bool half_space,
                                                   bool normalize) {
  check_common(w_in, "w", kind, s, t, eps_norm, normalize);
  TORCH_CHECK_VALUE(w_in.size(1) >= 2, "w must have N >= 2 rows, got ", w_in.size(1));
  if (small_d_serves(w_in, kind))  // points on a circle or a low-dimensional sphere: csrc/cpu/hsu_cpu_small.cpp
    return energy_grad_small_cpu(w_in, kind, s, t, eps_norm, eps_ang, half_space, normalize);
  const at::Tensor w = w_in.to(out_dtype(w_in)).contiguous();
  const int64_t B = w.size(0), n = w.size(1);
  at::Tensor energy = at::empty({B}, w.options().dtype(at::kDouble));
  at::Tensor grad = at::empty_like(w);
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "hsu_energy_grad_cpu", [&] {
    using T = scalar_t;
    const auto p = make_params<T>(kind, s, t, eps_ang, half_space, normalize);
    at::Tensor sq, st;
    row_statistics(p, w, static_cast<T>(eps_norm), "w", sq, st);
    std::vector<double> e(B * n);
    at::Tensor b = normalize ? at::Tensor() : at::empty({B, n}, w.options());
    const at::Tensor sd = double_stats<T>(w, eps_norm, normalize);
    const RowStats rs{sd.data_ptr<double>(), sd.data_ptr<double>()};
    row_pass<T>(p, w, st, w, st, rs, true, e.data(), grad.data_ptr<T>(), normalize ? nullptr : b.data_ptr<T>());
    const T ps = pair_scale<T>(true, half_space);
    std::vector<double> ed = finish_rows<T>(p, w, sd, grad, normalize ? nullptr : b.data_ptr<T>(),
                                            grad_scale<double>(true, half_space), eps_norm, half_space);
    double* ep = energy.data_ptr<double>();
    for (int64_t bb = 0; bb < B; ++bb) {
      double pairs = 0.0, diag = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        pairs += e[bb * n + i];
        diag += ed[bb * n + i];
      }
      ep[bb] = static_cast<double>(ps) * pairs + diag;
    }
  });
  return {energy.to(out_dtype(w_in)), grad.to(w_in.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_energy_grad_cpu(const at::Tensor& x_in, const at::Tensor& y_in,
                                                                     int64_t kind, double s, double t,
                                                                     double eps_norm, double eps_ang,
                                                                     bool half_space, bool normalize) {
  check_cross(x_in, y_in, kind, s, t, eps_norm, normalize);
  const auto dt =
      (x_in.scalar_type() == at::kDouble || y_in.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
  const at::Tensor x = x_in.to(dt).contiguous();
  const at::Tensor y = y_in.to(dt).contiguous();
  const int64_t B = x.size(0), nx = x.size(1), ny = y.size(1);
  at::Tensor energy = at::empty({B}, x.options().dtype(at::kDouble));
  at::Tensor gx = at::empty_like(x), gy = at::empty_like(y);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hsu_cross_energy_grad_cpu", [&] {
    using T = scalar_t;
    const auto p = make_params<T>(kind, s, t, eps_ang, half_space, normalize);
    at::Tensor sqx, stx, sqy, sty;
    row_statistics(p, x, static_cast<T>(eps_norm), "x", sqx, stx);
    row_statistics(p, y, static_cast<T>(eps_norm), "y", sqy, sty);
    std::vector<double> ex(B * nx), ey(B * ny);
    at::Tensor bx = normalize ? at::Tensor() : at::empty({B, nx}, x.options());
    at::Tensor by = normalize ? at::Tensor() : at::empty({B, ny}, y.options());
    T* bxp = normalize ? nullptr : bx.data_ptr<T>();
    T* byp = normalize ? nullptr : by.data_ptr<T>();
    const at::Tensor sdx = double_stats<T>(x, eps_norm, normalize), sdy = double_stats<T>(y, eps_norm, normalize);
    row_pass<T>(p, x, stx, y, sty, RowStats{sdx.data_ptr<double>(), sdy.data_ptr<double>()}, false, ex.data(),
                gx.data_ptr<T>(), bxp);
    row_pass<T>(p, y, sty, x, stx, RowStats{sdy.data_ptr<double>(), sdx.data_ptr<double>()}, false, ey.data(),
                gy.data_ptr<T>(), byp);
    finish_rows<T>(p, x, sdx, gx, bxp, 1.0, eps_norm, false);
    finish_rows<T>(p, y, sdy, gy, byp, 1.0, eps_norm, false);
    double* ep = energy.data_ptr<double>();
    for (int64_t bb = 0; bb < B; ++bb) {
      double acc = 0.0;
      for (int64_t i = 0; i < nx; ++i) acc += ex[bb * nx + i];
      ep[bb] = acc;
    }
  });
  return {energy.to(dt), gx.to(x_in.scalar_type()), gy.to(y_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(hsu, CPU, m) {
  m.impl("energy_grad", &energy_grad_cpu);
  m.impl("cross_energy_grad", &cross_energy_grad_cpu);
}

}  // namespace hsu
