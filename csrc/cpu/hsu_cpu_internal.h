// What the CPU kernel's engines share (csrc/cpu/, see hsu_cpu.cpp): the rows of a pass and its per-row outputs,
// the per-row loops of the pair terms (pair sums and the log-sum's log terms and weights), the careful path of
// a flagged pair, the tile chunking and the symmetric tile schedule of the self engines, and the engines'
// entry points:
//
//   hsu_cpu.cpp         the op entry points (energy_grad_cpu, cross_energy_grad_cpu): checks, row statistics,
//                       one pass per side, the row epilogue and the energy's reduction
//   hsu_cpu_self.cpp    self energies of the pair-sum kinds: symmetric tiles (self_pass)
//   hsu_cpu_logsum.cpp  self energies of the log-sum kind (the Gaussian): symmetric tiles with an online
//                       log-sum-exp (logsum_self_pass)
//   hsu_cpu_cross.cpp   cross energies of every kind: the direct and GEMM row-strip engines (cross_pass)
//   hsu_cpu_small.cpp   self energies at D <= 4 (hsu_cpu_small.h)
//
// Each engine file turns the run-time kind, flags and exponent mode into template arguments (hsu_pair.h's
// dispatch_pass) and instantiates its pass for float and double, so the engines compile in parallel. In a
// portable build every file is compiled again per instruction set (csrc/cpu/isa/); everything here then lives
// in that copy's inline namespace (csrc/hsu_isa.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <type_traits>
#include <vector>

#include "../hsu_isa.h"
#include "../hsu_kinds.h"
#include "../hsu_pair.h"

namespace hsu {
HSU_ISA_BEGIN
namespace cpu {

constexpr int64_t kDirectMaxD = 32;  // cross energies: direct engine up to this D
constexpr int64_t kPreciseMaxD = 32;  // dot products (of double u rows) in double up to this D

// The read-only data of one side of a pass (pointers into [B, n, ...] tensors; batch entry bb starts at
// bb * n rows). G is the type of the geometry rows and statistics the tiles see.
template <typename T, typename G>
struct Side {
  at::Tensor xg;       // [B, n, D] geometry rows in G: u (normalized) or w
  at::Tensor z;        // [B, n, D] the same rows in T: the gradient products' operand
  const T* w;          // rows as given: the careful path's coordinates
  const double* r;     // normalized: 1 / sqrt(|w|^2 + eps_norm)
  const double* a;     // normalized: eps_norm r^2
  const double* q;     // un-normalized: |w|^2
  const G* qg;         // un-normalized: |w|^2 in G
  int64_t n, D;
};

// Per-row outputs of one pass (same indexing): e_i (Gaussian: the row's sum of exp(x - m_i)),
// a_i = sum_j c_ij z_j, rad_i (normalized: the careful pairs' radial coefficients; un-normalized:
// sum_j ci_ij), m_i (Gaussian: the row's shift). The accumulators a_i are in the type G of the products:
// `a` (T) for float products, `ad` (double) for double ones, so that where the cosines are double the
// rounding of u_j to float (one ulp of |c u_j|, against its tangential part |c| sin(theta)) does not come
// back through the gradient. ad == a when T is double.
template <typename T>
struct RowOut {
  double* e;
  T* a;
  double* ad;
  double* rad;
  double* m;

  template <typename G>
  G* acc() const {
    if constexpr (std::is_same_v<G, double>) return ad;
    else return a;
  }
};

// What every tile needs besides the rows: the parameters in T and double, the per-pair share of the
// output scale, whether the close-pair check is on, and whether a row may skip it when no cosine of the row
// is within close_tau of +-1 (row_terms_checked).
template <typename T>
struct PassCtx {
  Params<T> p;
  Params<double> pd;
  double cs;
  bool check;
  bool prescan;
};

// The row data of one side of a pass, prepared once: the rows as given, their double statistics, and the
// rows the tiles multiply (u = w r normalized, w otherwise) in T and, for double geometry, in double.
template <typename T>
struct Prepared {
  at::Tensor w, r, a, q, qt, z, zd;
  int64_t B, n, D;

  template <typename G>
  Side<T, G> side() const {
    const bool norm = r.defined();
    at::Tensor xg = std::is_same_v<G, T> ? z : zd;
    const G* qg = nullptr;
    if (!norm) qg = std::is_same_v<G, double> ? reinterpret_cast<const G*>(q.data_ptr<double>())
                                              : reinterpret_cast<const G*>(qt.data_ptr<T>());
    return Side<T, G>{xg, z, w.data_ptr<T>(), norm ? r.data_ptr<double>() : nullptr,
                      norm ? a.data_ptr<double>() : nullptr, norm ? nullptr : q.data_ptr<double>(), qg, n, D};
  }
};


// The engines' passes, each instantiated for float and double in its own file. A pass fills the per-row
// outputs `out` of every row of X (every batch entry): e, a or ad, rad, and m for the log-sum kind.
// Self energy, a pair-sum kind (hsu_cpu_self.cpp).
template <typename T>
void self_pass(const PassCtx<T>& cx, const Prepared<T>& X, RowOut<T> out);
// Self energy, the log-sum kind (hsu_cpu_logsum.cpp).
template <typename T>
void logsum_self_pass(const PassCtx<T>& cx, const Prepared<T>& X, RowOut<T> out);
// Cross energy, rows of X against rows of Y, every kind (hsu_cpu_cross.cpp).
template <typename T>
void cross_pass(const PassCtx<T>& cx, const Prepared<T>& X, const Prepared<T>& Y, RowOut<T> out);
extern template void self_pass<float>(const PassCtx<float>&, const Prepared<float>&, RowOut<float>);
extern template void self_pass<double>(const PassCtx<double>&, const Prepared<double>&, RowOut<double>);
extern template void logsum_self_pass<float>(const PassCtx<float>&, const Prepared<float>&, RowOut<float>);
extern template void logsum_self_pass<double>(const PassCtx<double>&, const Prepared<double>&, RowOut<double>);
extern template void cross_pass<float>(const PassCtx<float>&, const Prepared<float>&, const Prepared<float>&,
                                       RowOut<float>);
extern template void cross_pass<double>(const PassCtx<double>&, const Prepared<double>&, const Prepared<double>&,
                                        RowOut<double>);

// ---------------------------------------------------------------------------------------------------------
// Per-row loops of the pair-sum kinds (self and cross engines).

// One row of a tile against m columns whose cosines (normalized) or raw dot products are v[0..m), every
// kind but the Gaussian: writes coef[jj] (0 on the skipped diagonal and on careful pairs), flag[jj] (1 on
// the careful pairs, else 0), ecol[jj] / ccol[jj] (the kept energies and ci) and returns the row's sums
// and the number of careful pairs. Everything is fixed at compile time so the loop vectorizes. coef may
// alias v. The flags and their count are in T, not bytes or integers: mixed widths in this loop made GCC's
// vector code ~8x slower per pair (measured: 2.5 ns against 20 ns with uint8 flags and an int64 count).
template <typename T, typename G, int64_t KIND, bool HS, bool NORM, int MODE, bool CHECK, typename CT>
inline int64_t row_terms(const Params<T>& p, T cs, const G* v, G qi, const G* qj, int64_t m, int64_t skip, CT* coef,
                         T* flag, T* ecol, T* ccol, T& esum, CT& bsum) {
  T es = T(0), nc = T(0);
  CT bs = CT(0);  // in the coefficients' type: it meets their sum (times w_i) in the epilogue
#pragma omp simd reduction(+ : es, bs, nc)
  for (int64_t jj = 0; jj < m; ++jj) {
    T e, c, ci = T(0);
    bool care;
    if constexpr (NORM) care = pair_norm<KIND, HS, MODE>(p.s, p.t, p.eps_ang, cs, v[jj], e, c);
    else care = pair_raw<KIND, HS, MODE>(p.s, p.t, cs, v[jj], qi, qj[jj], e, c, ci);
    const bool keep = jj != skip;
    // the diagonal is selected away, never subtracted: its terms are infinite when eps_norm = 0
    const T fix = (CHECK && keep && care) ? T(1) : T(0);
    const bool use = keep && fix == T(0);
    e = use ? e : T(0);
    c = use ? c : T(0);
    ci = use ? ci : T(0);
    es += e;
    bs += static_cast<CT>(ci);
    nc += fix;
    coef[jj] = c;
    flag[jj] = fix;
    ecol[jj] = e;
    ccol[jj] = ci;
  }
  esum = es;
  bsum = bs;
  return static_cast<int64_t>(nc);
}

// The largest |v| of a row's cosines, the skipped diagonal left out (its own cosine is |u_i|^2 ~ 1).
template <typename G>
inline G row_max_abs(const G* v, int64_t m, int64_t skip) {
  G mx = G(0);
#pragma omp simd reduction(max : mx)
  for (int64_t jj = 0; jj < m; ++jj) {
    const G a = jj == skip ? G(0) : (v[jj] < G(0) ? -v[jj] : v[jj]);
    mx = mx > a ? mx : a;
  }
  return mx;
}

// row_terms with the close-pair check where it can matter. Normalized, with no term of a pair at least
// close_tau away from +-1 able to leave T (PassCtx::prescan), a row whose largest |g| is below 1 - close_tau
// has no pair the check would flag (1 - |g| is monotone in |g|), so it runs the loop without the check:
// the check's cost on random rows is then one max over the row (measured ~0.05 against ~0.25 ns per pair
// for the in-loop check, AVX-512, Riesz s = 1).
template <typename T, typename G, int64_t KIND, bool HS, bool NORM, int MODE, typename CT>
inline int64_t row_terms_checked(const PassCtx<T>& cx, const G* v, G qi, const G* qj, int64_t m, int64_t skip,
                                 CT* coef, T* flag, T* ecol, T* ccol, T& esum, CT& bsum) {
  bool check = cx.check;
  if (check && NORM && cx.prescan) check = !(G(1) - row_max_abs(v, m, skip) >= close_tau<T, G>());
  if (check)
    return row_terms<T, G, KIND, HS, NORM, MODE, true>(cx.p, static_cast<T>(cx.cs), v, qi, qj, m, skip, coef, flag,
                                                      ecol, ccol, esum, bsum);
  return row_terms<T, G, KIND, HS, NORM, MODE, false>(cx.p, static_cast<T>(cx.cs), v, qi, qj, m, skip, coef, flag,
                                                     ecol, ccol, esum, bsum);
}

// The careful path for pair (i, j) of two sides: its energy, and its gradient terms added to row i's
// accumulator (and row j's when acc_j is not null; rad_j is then j's radial coefficient).
template <typename T, typename G, int64_t KIND, bool HS, bool NORM, typename A>
inline double careful_pair(const PassCtx<T>& c, const Side<T, G>& X, int64_t i, const Side<T, G>& Y, int64_t j,
                           A* acc_i, A* acc_j, double& rad_i, double& rad_j) {
  const int64_t D = X.D;
  const T* wi = X.w + i * D;
  const T* wj = Y.w + j * D;
  const double ri = NORM ? X.r[i] : 1.0, rj = NORM ? Y.r[j] : 1.0;
  const double ai = NORM ? X.a[i] : 0.0, aj = NORM ? Y.a[j] : 0.0;
  const CarefulGeom q = careful_geom<NORM>(wi, wj, D, ri, rj, ai, aj);
  double e;
  const CarefulCoef k = careful_terms<KIND, HS, NORM>(c.pd, c.cs, q, e);
  careful_apply<NORM>(k, q.sign, wi, wj, D, ri, rj, ai, aj, acc_i, acc_j, rad_i, rad_j);
  return e;
}

// ---------------------------------------------------------------------------------------------------------
// Per-row loops of the log-sum kind (the log-sum self engine and the cross engines).

// The Gaussian kind's first loop over a tile row: the log terms x1 (and x2, half-space) into buffers,
// -inf on the skipped diagonal, and the careful flags. Returns the number of careful pairs.
template <typename T, typename G, bool HS, bool NORM, bool CHECK>
inline int64_t row_logs(T t, const G* v, G qi, const G* qj, int64_t m, int64_t skip, T* x1, T* x2, T* flag) {
  T nc = T(0);
  const T ninf = -static_cast<T>(INFINITY);
#pragma omp simd reduction(+ : nc)
  for (int64_t jj = 0; jj < m; ++jj) {
    T l1, l2;
    const bool care = gauss_logs<HS, NORM>(t, v[jj], qi, NORM ? qi : qj[jj], l1, l2);
    const bool keep = jj != skip;
    const T fix = (CHECK && keep && care) ? T(1) : T(0);
    nc += fix;
    flag[jj] = fix;
    x1[jj] = keep ? l1 : ninf;
    x2[jj] = keep ? l2 : ninf;
  }
  return static_cast<int64_t>(nc);
}

// The Gaussian kind's second loop: weights exp(x - shift) into energies and coefficients (0 on careful
// pairs, whose gradients the careful path adds).
template <typename T, bool NORM, typename CT>
inline void row_weights(T t, T shift, const T* x1, const T* x2, const T* flag, int64_t m, CT* coef, T* ecol,
                        T* ccol, T& esum, CT& bsum) {
  T es = T(0);
  CT bs = CT(0);
#pragma omp simd reduction(+ : es, bs)
  for (int64_t jj = 0; jj < m; ++jj) {
    const T w1 = hsu_exp(x1[jj] - shift), w2 = hsu_exp(x2[jj] - shift);
    T c, ci;
    gauss_coef<NORM>(t, w1, w2, c, ci);
    const bool use = flag[jj] == T(0);
    es += w1 + w2;
    ecol[jj] = w1 + w2;
    c = use ? c : T(0);
    ci = use ? ci : T(0);
    bs += static_cast<CT>(ci);
    coef[jj] = c;
    ccol[jj] = ci;
  }
  esum = es;
  bsum = bs;
}

// Gaussian careful pair, first half: its log terms from coordinates (the geometry is returned for the
// second half, careful_gauss_apply, which needs the weights).
template <typename T, typename G, bool HS, bool NORM>
inline CarefulGeom careful_gauss_logs(const PassCtx<T>& c, const Side<T, G>& X, int64_t i, const Side<T, G>& Y,
                                      int64_t j, double& x1, double& x2) {
  const int64_t D = X.D;
  const CarefulGeom q = careful_geom<NORM>(X.w + i * D, Y.w + j * D, D, NORM ? X.r[i] : 1.0, NORM ? Y.r[j] : 1.0,
                                           NORM ? X.a[i] : 0.0, NORM ? Y.a[j] : 0.0);
  careful_logs<HS, NORM>(c.pd.t, q, x1, x2);
  return q;
}

// Gaussian careful pair, second half: its gradient terms for row i with weights w1, w2 relative to row
// i's shift.
template <typename T, typename G, bool NORM, typename A>
inline void careful_gauss_apply(const PassCtx<T>& c, const CarefulGeom& q, const Side<T, G>& X, int64_t i,
                                const Side<T, G>& Y, int64_t j, double w1, double w2, A* acc_i, double& rad_i) {
  const int64_t D = X.D;
  double unused = 0.0;
  careful_apply<NORM>(careful_gauss_coef<NORM>(c.pd.t, w1, w2), q.sign, X.w + i * D, Y.w + j * D, D,
                      NORM ? X.r[i] : 1.0, NORM ? Y.r[j] : 1.0, NORM ? X.a[i] : 0.0, NORM ? Y.a[j] : 0.0, acc_i,
                      static_cast<A*>(nullptr), rad_i, unused);
}

// The largest log term of a tile row (-inf when every term is -inf: weights of 0).
template <typename T>
inline double row_max(const T* x1, const T* x2, int64_t m) {
  T mx = -static_cast<T>(INFINITY);
  for (int64_t jj = 0; jj < m; ++jj) mx = std::max(mx, std::max(x1[jj], x2[jj]));
  return static_cast<double>(mx);
}

// Raises a row's shift m to `top` if higher, rescaling the sums already taken relative to it.
template <typename A>
inline void lift_shift(double& m, double top, double& e, double& rad, A* acc, int64_t D) {
  if (!(top > m)) return;
  if (m > -static_cast<double>(INFINITY)) {
    const double f = std::exp(m - top);
    e *= f;
    rad *= f;
    for (int64_t d = 0; d < D; ++d) acc[d] = static_cast<A>(static_cast<double>(acc[d]) * f);
  }
  m = top;
}

// The shift the weights of a row are taken against: its running maximum, or 0 while it has seen only
// -inf terms (exp(-inf - 0) = 0, where exp(-inf - (-inf)) would be NaN).
template <typename T>
inline T weight_shift(double m) {
  return m > -static_cast<double>(INFINITY) ? static_cast<T>(m) : T(0);
}

template <typename T>
inline double gauss_weight(T x, double m) {
  return std::exp(static_cast<double>(x) - (m > -static_cast<double>(INFINITY) ? m : 0.0));
}

// ---------------------------------------------------------------------------------------------------------
// Threads.

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

// ---------------------------------------------------------------------------------------------------------
// The self engines' tiles (hsu_cpu_self.cpp, hsu_cpu_logsum.cpp).

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
// The careful pairs of a tile are fixed up after its chunks, on the calling thread, in tile order.
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

// The chunking of a tile's bi rows and bj columns (see kSplitRows): pieces of `piece` rows, nrow row chunks
// and (off-diagonal tiles) ncol column chunks.
struct Chunks {
  int64_t piece, nrow, ncol;
  Chunks(int64_t bi, int64_t bj, bool diag, bool split)
      : piece(split ? kSplitRows : std::max(bi, bj)),
        nrow((bi + piece - 1) / piece),
        ncol(diag ? 0 : (bj + piece - 1) / piece) {}
  int64_t begin(int64_t k) const { return k * piece; }
  int64_t size(int64_t k, int64_t total) const { return std::min(total, (k + 1) * piece) - k * piece; }
};

// Rows [r0, r0 + rows) of a tile's products: S[r0:] = X_I[r0:] X_J^T (one BLAS call, in G).
template <typename G>
void tile_products(at::Tensor& S, const at::Tensor& Xg, int64_t i0, int64_t j0, int64_t bj, int64_t r0,
                   int64_t rows) {
  at::Tensor Sr = S.narrow(0, r0, rows);
  at::mm_out(Sr, Xg.narrow(0, i0 + r0, rows), Xg.narrow(0, j0, bj).t());
}

// Clears a self pass's per-row outputs (the log-sum kind's shifts to -inf) before its tiles add to them.
template <typename T, typename G>
void clear_rows(RowOut<T> out, int64_t B, int64_t n, int64_t D) {
  std::fill(out.e, out.e + B * n, 0.0);
  std::fill(out.rad, out.rad + B * n, 0.0);
  if (out.m) std::fill(out.m, out.m + B * n, -static_cast<double>(INFINITY));
  G* acc = out.template acc<G>();
  std::fill(acc, acc + B * n * D, G(0));
}

// One tile of a self pass: rows [i0, i1) against rows [j0, j1) of batch entry bb (or a block against itself,
// i0 == j0); `split`: cut into chunks run on every thread (see kSplitRows).
using SymTileFn = std::function<void(int64_t bb, int64_t i0, int64_t i1, int64_t j0, int64_t j1, bool split)>;

// Runs the tiles of a self energy of B matrices of n rows in the round-robin order described above
// (hsu_cpu_self.cpp), each inside a WorkerScope.
void run_symmetric_tiles(int64_t B, int64_t n, const SymTileFn& tile);

}  // namespace cpu
HSU_ISA_END
}  // namespace hsu
