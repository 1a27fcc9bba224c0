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
// Numerics (README "Precision"): rows are normalized once, in double, after a power-of-two rescaling
// (u = w r, no |w|^2 overflows); tiles multiply u rows, so g needs no row statistics. Every pair the
// vectorized loop flags (hsu_pair.h: 1 - |g| below close_tau, or a term not finite in T) is recomputed on
// the careful path, in double from the rows' coordinates, and its gradient enters as a small vector plus
// a radial coefficient the epilogue applies in closed form. The Gaussian kind is an online log-sum-exp:
// each row keeps a shift (the largest tile maximum it has seen) and its sums are rescaled when it grows.
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
#include <cstdint>
#include <exception>
#include <limits>
#include <vector>

#include "../hsu_checks.h"
#include "../hsu_kinds.h"
#include "../hsu_pair.h"
#include "hsu_cpu_small.h"

namespace hsu {

// The close-pair check (and the careful path it leads to) can be switched off for one measurement: the
// benchmark's "close-pair check off" column times the kernel without it on inputs that have no close
// pair, which is the check's whole cost there. Set from Python through hsu_kernels._C._set_close_pair_check;
// it applies to the pair-sum kinds' tiles and strips (PassCtx::check), and in the D <= 4 kernel to float64
// rows of every kind.
extern std::atomic<bool> g_close_pair_check;  // csrc/cpu/hsu_cpu_dispatch.cpp

HSU_ISA_BEGIN
namespace {

constexpr int64_t kDirectMaxD = 32;  // cross energies: direct engine up to this D
constexpr int64_t kPreciseMaxD = 32;  // dot products (of double u rows) in double up to this D
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

template <typename T, typename G, int64_t KIND, bool HS, bool NORM, int MODE>
void gemm_self_symmetric(const PassCtx<T>& cx, const Side<T, G>& X, int64_t B, RowOut<T> out) {
  const int64_t n = X.n, D = X.D;
  const int64_t nblk = (n + kSymBlock - 1) / kSymBlock;
  const int64_t m = nblk + (nblk & 1);  // teams, with a bye when nblk is odd
  std::fill(out.e, out.e + B * n, 0.0);
  std::fill(out.rad, out.rad + B * n, 0.0);
  if (out.m) std::fill(out.m, out.m + B * n, -static_cast<double>(INFINITY));
  G* acc = out.template acc<G>();
  std::fill(acc, acc + B * n * D, G(0));
  auto block = [&](int64_t k) { return std::make_pair(k * kSymBlock, std::min(n, (k + 1) * kSymBlock)); };
  // Few tiles: the tiles run one after the other and each spreads its chunks over every thread. Otherwise
  // tiles run in parallel, one thread each. The choice depends on the shape only (see kSplitRows).
  const int64_t ntiles = B * nblk * (nblk + 1) / 2;
  const bool inner_parallel = ntiles < kFewTiles;
  auto run = [&](int64_t bb, int64_t I, int64_t J) {
    WorkerScope worker;
    const auto [i0, i1] = block(I);
    const auto [j0, j1] = block(J);
    if constexpr (KindTraits<KIND>::logsum) sym_tile_lse<T, G, HS, NORM>(cx, X, bb, i0, i1, j0, j1, out, inner_parallel);
    else sym_tile<T, G, KIND, HS, NORM, MODE>(cx, X, bb, i0, i1, j0, j1, out, inner_parallel);
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

// Refuses NaN/Inf (also when called from a compiled graph, where the Python-side check cannot run) and,
// normalized with eps_norm = 0, rows without a direction; then the statistics and rows of `Prepared`.
template <typename T>
Prepared<T> prepare(const at::Tensor& X, bool normalize, double eps_norm, bool double_geometry, const char* name) {
  TORCH_CHECK_VALUE(at::isfinite(X).all().item<bool>(), name, " contains NaN or Inf");
  Prepared<T> P;
  P.w = X;
  P.B = X.size(0);
  P.n = X.size(1);
  P.D = X.size(2);
  const int64_t rows = P.B * P.n, D = P.D;
  const at::TensorOptions dopt = X.options().dtype(at::kDouble);
  const bool need_zd = double_geometry && !std::is_same_v<T, double>;
  if (normalize) {
    P.r = at::empty({P.B, P.n}, dopt);
    P.a = at::empty({P.B, P.n}, dopt);
  } else {
    P.q = at::empty({P.B, P.n}, dopt);
    P.qt = at::empty({P.B, P.n}, X.options());
  }
  P.z = normalize ? at::empty_like(X) : X;
  if (need_zd) P.zd = at::empty({P.B, P.n, D}, dopt);
  const T* xp = X.data_ptr<T>();
  T* zp = P.z.template data_ptr<T>();
  double* zdp = need_zd ? P.zd.template data_ptr<double>() : nullptr;
  double* rp = normalize ? P.r.template data_ptr<double>() : nullptr;
  double* ap = normalize ? P.a.template data_ptr<double>() : nullptr;
  double* qp = normalize ? nullptr : P.q.template data_ptr<double>();
  T* qtp = normalize ? nullptr : P.qt.template data_ptr<T>();
  at::parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* xi = xp + i * D;
      if (normalize) {
        row_norm(xi, D, eps_norm, rp[i], ap[i]);
        for (int64_t d = 0; d < D; ++d) {
          const double u = static_cast<double>(xi[d]) * rp[i];
          zp[i * D + d] = static_cast<T>(u);
          if (zdp) zdp[i * D + d] = u;
        }
      } else {
        qp[i] = row_sq(xi, D);
        qtp[i] = static_cast<T>(qp[i]);
        if (zdp)
          for (int64_t d = 0; d < D; ++d) zdp[i * D + d] = static_cast<double>(xi[d]);
      }
    }
  });
  if (normalize && eps_norm == 0.0) {
    // r = 1/|w| is infinite for a zero row and overflows double only for rows whose every entry is below
    // ~1e-308, whose gradient (~1/|w|) overflows too
    TORCH_CHECK_VALUE(!(P.r == 0.0).logical_or(P.r.isinf()).any().template item<bool>(), name,
                      " has a zero row (or one below 1e-300), which has no direction when eps_norm=0");
  }
  return P;
}

// One pass for every batch entry: rows of X[b] against rows of Y[b]. Self: symmetric tiles. Cross: tasks
// are (batch, row block) pairs of the direct or the GEMM engine.
template <typename T, int64_t KIND, bool HS, bool NORM, int MODE>
void row_pass_fixed(const PassCtx<T>& cx, const Prepared<T>& X, const Prepared<T>& Y, bool self, RowOut<T> out) {
  const int64_t B = X.B, n1 = X.n, n2 = Y.n, D = X.D;
  const bool precise = D <= kPreciseMaxD || std::is_same_v<T, double>;
  if (self) {
    if (precise) gemm_self_symmetric<T, double, KIND, HS, NORM, MODE>(cx, X.template side<double>(), B, out);
    else gemm_self_symmetric<T, T, KIND, HS, NORM, MODE>(cx, X.template side<T>(), B, out);
    return;
  }
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

// The kind, flags and exponent mode as template arguments (hsu_pair.h's dispatch_pass).
template <typename T>
void row_pass(const PassCtx<T>& cx, const Prepared<T>& X, const Prepared<T>& Y, bool self, RowOut<T> out) {
  dispatch_pass(cx.p, [&]<int64_t KIND, bool HS, bool NORM, int MODE>() {
    row_pass_fixed<T, KIND, HS, NORM, MODE>(cx, X, Y, self, out);
  });
}

// The per-row buffers of one pass. `grad` (T) holds the accumulators where the products are in T, and
// dE/dw after finish_rows; `acc` (double) holds them where the products are in double (D <= kPreciseMaxD:
// the self engine's double geometry and the direct cross engine; every pass of float64 rows, where it is
// `grad` itself).
template <typename T>
struct PassBuffers {
  std::vector<double> e, rad, m;
  at::Tensor grad, acc;
  PassBuffers(const Prepared<T>& P, bool lse)
      : e(P.B * P.n), rad(P.B * P.n), m(lse ? P.B * P.n : 0), grad(at::empty_like(P.w)) {
    if (std::is_same_v<T, double>) acc = grad;
    else if (P.D <= kPreciseMaxD) acc = at::empty(P.w.sizes(), P.w.options().dtype(at::kDouble));
  }
  RowOut<T> out() {
    return RowOut<T>{e.data(), grad.data_ptr<T>(), acc.defined() ? acc.template data_ptr<double>() : nullptr,
                     rad.data(), m.empty() ? nullptr : m.data()};
  }
};

// The half-space self terms (energies, or log terms for the Gaussian kind, and their gradient
// coefficients, see diag_term) of every row.
template <typename T>
void diag_terms(const Params<double>& pd, const Prepared<T>& P, std::vector<double>& ed, std::vector<double>& kd) {
  const int64_t rows = P.B * P.n;
  ed.assign(rows, 0.0);
  kd.assign(rows, 0.0);
  const double* stat = pd.normalize ? P.a.template data_ptr<double>() : P.q.template data_ptr<double>();
  for (int64_t i = 0; i < rows; ++i) diag_term(pd, stat[i], ed[i], kd[i]);
}

// dE/dw from the accumulators, in place (see row_grad): row i's pair sums scaled by gs[i] (or gs0 when
// gs is empty), its self term by kscale[i] (or kscale0).
template <typename T>
void finish_rows(const Params<double>& pd, const Prepared<T>& P, PassBuffers<T>& buf, const std::vector<double>& gs,
                 double gs0, const std::vector<double>& kd, const std::vector<double>& kscale, double kscale0) {
  const int64_t D = P.D;
  const T* xp = P.w.template data_ptr<T>();
  const double* rp = pd.normalize ? P.r.template data_ptr<double>() : nullptr;
  T* gp = buf.grad.template data_ptr<T>();
  const double* accd = buf.acc.defined() ? buf.acc.template data_ptr<double>() : nullptr;
  at::parallel_for(0, P.B * P.n, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const double g = gs.empty() ? gs0 : gs[i];
      const double k = kd.empty() ? 0.0 : kd[i] * (kscale.empty() ? kscale0 : kscale[i]);
      if (accd)
        row_grad<T, double>(pd.normalize, xp + i * D, rp ? rp[i] : 1.0, accd + i * D, buf.rad[i], g, k, D,
                            gp + i * D);
      else
        row_grad<T, T>(pd.normalize, xp + i * D, rp ? rp[i] : 1.0, gp + i * D, buf.rad[i], g, k, D, gp + i * D);
    }
  });
}

at::ScalarType out_dtype(const at::Tensor& w) {
  return w.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// log sum_i exp(l_i) over a batch entry's terms, l_i = -inf allowed (the Gaussian kind's normalizer).
double log_sum_exp(const std::vector<double>& l) {
  double top = -static_cast<double>(INFINITY);
  for (double v : l) top = std::max(top, v);
  if (!(top > -static_cast<double>(INFINITY))) return top;
  double s = 0.0;
  for (double v : l) s += std::exp(v - top);
  return top + std::log(s);
}

// Whether a normalized pair at least close_tau<T, double> away from +-1 (the smaller threshold, so both
// geometries are covered) can have a term or coefficient that leaves T in a row's sum of n of them: then
// every row runs the check, whose other half catches exactly that (angular s = 50, Riesz s beyond ~15).
// The terms and coefficients of such pairs are largest at the threshold, on either side.
template <typename T>
bool fast_terms_may_overflow(const Params<double>& pd, double cs, int64_t n) {
  const double tau = close_tau<T, double>();
  double f1, d1, f2, d2;
  phi_g_om(pd, 1.0 - tau, tau, f1, d1);
  phi_g_om(pd, -(1.0 - tau), tau, f2, d2);
  const double worst = std::max(std::abs(f1) + std::abs(f2), cs * (std::abs(d1) + std::abs(d2)));
  return !(worst * static_cast<double>(n) < static_cast<double>(std::numeric_limits<T>::max()) / 16);
}

template <typename T>
PassCtx<T> make_ctx(int64_t kind, double s, double t, double eps_ang, bool half_space, bool normalize,
                    double scale, int64_t n) {
  PassCtx<T> c{make_params<T>(kind, s, t, eps_ang, half_space, normalize),
               make_params<double>(kind, s, t, eps_ang, half_space, normalize),
               kind_info(kind).logsum ? 1.0 : coef_scale(scale), g_close_pair_check.load(), false};
  c.prescan = normalize && !kind_info(kind).logsum && !fast_terms_may_overflow<T>(c.pd, c.cs, n);
  return c;
}

// Whether a float run's gradient has a non-finite entry where its accumulators were float (D above
// kPreciseMaxD): a row's sum_j c_ij u_j can leave float while the gradient, r_i times it, fits (float32 rows
// of norm ~600 with a near duplicate, angular s = 9.5: c u_j ~ 1e39, the gradient ~1e36). The call then
// runs again in double; a gradient that is truly not finite comes out the same, only later.
bool float_acc_overflowed(const at::Tensor& w, const at::Tensor& grad) {
  return w.scalar_type() == at::kFloat && w.size(2) > kPreciseMaxD && !at::isfinite(grad).all().item<bool>();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> energy_grad_cpu(const at::Tensor& w_in, int64_t kind, double s, double t,
                                                   double eps_norm, double eps_ang, bool half_space, bool normalize,
                                                   double scale) {
  check_common(w_in, "w", kind, s, t, eps_norm, eps_ang, normalize, scale);
  TORCH_CHECK_VALUE(w_in.size(1) >= 2, "w must have N >= 2 rows, got ", w_in.size(1));
  if (raw_rows_need_double(w_in, normalize, kind, t)) {
    auto [e, g] = energy_grad_cpu(w_in.to(at::kDouble), kind, s, t, eps_norm, eps_ang, half_space, normalize, scale);
    return {e.to(out_dtype(w_in)), g.to(w_in.scalar_type())};
  }
  if (small_d_serves(w_in, kind))  // points on a circle or a low-dimensional sphere: csrc/cpu/hsu_cpu_small.cpp
    return energy_grad_small_cpu(w_in, kind, s, t, eps_norm, eps_ang, half_space, normalize, scale);
  const at::Tensor w = w_in.to(out_dtype(w_in)).contiguous();
  const int64_t B = w.size(0), n = w.size(1);
  at::Tensor energy = at::empty({B}, w.options().dtype(at::kDouble));
  at::Tensor grad;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "hsu_energy_grad_cpu", [&] {
    using T = scalar_t;
    const PassCtx<T> cx = make_ctx<T>(kind, s, t, eps_ang, half_space, normalize, scale, n);
    const bool lse = kind_info(kind).logsum;
    const Prepared<T> P = prepare<T>(w, normalize, eps_norm, w.size(2) <= kPreciseMaxD, "w");
    PassBuffers<T> buf(P, lse);
    row_pass<T>(cx, P, P, true, buf.out());
    std::vector<double> ed, kd;
    if (half_space) diag_terms(cx.pd, P, ed, kd);
    const double ps = pair_scale<double>(true, half_space), gscale = grad_scale<double>(true, half_space);
    double* ep = energy.data_ptr<double>();
    if (lse) {
      // log Z = log(ps sum_i s_i e^{m_i} + sum_i e^{x_ii}); row i's gradient weight e^{m_i - log Z}
      std::vector<double> gs(B * n), ks(half_space ? B * n : 0);
      for (int64_t bb = 0; bb < B; ++bb) {
        std::vector<double> l;
        for (int64_t i = bb * n; i < (bb + 1) * n; ++i) {
          l.push_back(buf.m[i] + std::log(ps * buf.e[i]));
          if (half_space) l.push_back(ed[i]);
        }
        const double lz = log_sum_exp(l);
        ep[bb] = lz + std::log(scale);
        for (int64_t i = bb * n; i < (bb + 1) * n; ++i) {
          gs[i] = gscale * std::exp(buf.m[i] - lz);
          if (half_space) ks[i] = std::exp(ed[i] - lz);
        }
      }
      finish_rows<T>(cx.pd, P, buf, gs, 0.0, kd, ks, 0.0);
    } else {
      finish_rows<T>(cx.pd, P, buf, {}, gscale * scale / cx.cs, kd, {}, scale);
      for (int64_t bb = 0; bb < B; ++bb) {
        double pairs = 0.0, diag = 0.0;
        for (int64_t i = bb * n; i < (bb + 1) * n; ++i) {
          pairs += buf.e[i];
          if (half_space) diag += ed[i];
        }
        ep[bb] = scale * (ps * pairs + diag);
      }
    }
    grad = buf.grad;
  });
  if (float_acc_overflowed(w, grad)) {
    auto [e, g] = energy_grad_cpu(w_in.to(at::kDouble), kind, s, t, eps_norm, eps_ang, half_space, normalize, scale);
    return {e.to(out_dtype(w_in)), g.to(w_in.scalar_type())};
  }
  return {energy.to(out_dtype(w_in)), grad.to(w_in.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_energy_grad_cpu(const at::Tensor& x_in, const at::Tensor& y_in,
                                                                     int64_t kind, double s, double t,
                                                                     double eps_norm, double eps_ang,
                                                                     bool half_space, bool normalize, double scale) {
  check_cross(x_in, y_in, kind, s, t, eps_norm, eps_ang, normalize, scale);
  const bool wide = raw_rows_need_double(x_in, normalize, kind, t) || raw_rows_need_double(y_in, normalize, kind, t);
  const auto dt = (wide || x_in.scalar_type() == at::kDouble || y_in.scalar_type() == at::kDouble) ? at::kDouble
                                                                                                     : at::kFloat;
  const auto out_dt =
      (x_in.scalar_type() == at::kDouble || y_in.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
  const at::Tensor x = x_in.to(dt).contiguous();
  const at::Tensor y = y_in.to(dt).contiguous();
  const int64_t B = x.size(0), nx = x.size(1), ny = y.size(1);
  at::Tensor energy = at::empty({B}, x.options().dtype(at::kDouble));
  at::Tensor gx, gy;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hsu_cross_energy_grad_cpu", [&] {
    using T = scalar_t;
    const PassCtx<T> cx = make_ctx<T>(kind, s, t, eps_ang, half_space, normalize, scale, std::max(nx, ny));
    const bool lse = kind_info(kind).logsum;
    const bool dg = x.size(2) <= kPreciseMaxD;
    const Prepared<T> PX = prepare<T>(x, normalize, eps_norm, dg, "x");
    const Prepared<T> PY = prepare<T>(y, normalize, eps_norm, dg, "y");
    PassBuffers<T> bx(PX, lse), by(PY, lse);
    row_pass<T>(cx, PX, PY, false, bx.out());
    row_pass<T>(cx, PY, PX, false, by.out());
    double* ep = energy.data_ptr<double>();
    if (lse) {
      std::vector<double> gsx(B * nx), gsy(B * ny);
      for (int64_t bb = 0; bb < B; ++bb) {
        std::vector<double> l;
        for (int64_t i = bb * nx; i < (bb + 1) * nx; ++i) l.push_back(bx.m[i] + std::log(bx.e[i]));
        const double lz = log_sum_exp(l);
        ep[bb] = lz + std::log(scale);
        for (int64_t i = bb * nx; i < (bb + 1) * nx; ++i) gsx[i] = std::exp(bx.m[i] - lz);
        for (int64_t i = bb * ny; i < (bb + 1) * ny; ++i) gsy[i] = std::exp(by.m[i] - lz);
      }
      finish_rows<T>(cx.pd, PX, bx, gsx, 0.0, {}, {}, 0.0);
      finish_rows<T>(cx.pd, PY, by, gsy, 0.0, {}, {}, 0.0);
    } else {
      finish_rows<T>(cx.pd, PX, bx, {}, scale / cx.cs, {}, {}, 0.0);
      finish_rows<T>(cx.pd, PY, by, {}, scale / cx.cs, {}, {}, 0.0);
      for (int64_t bb = 0; bb < B; ++bb) {
        double acc = 0.0;
        for (int64_t i = bb * nx; i < (bb + 1) * nx; ++i) acc += bx.e[i];
        ep[bb] = scale * acc;
      }
    }
    gx = bx.grad;
    gy = by.grad;
  });
  if (float_acc_overflowed(x, gx) || float_acc_overflowed(y, gy)) {
    auto [e, gx2, gy2] = cross_energy_grad_cpu(x_in.to(at::kDouble), y_in.to(at::kDouble), kind, s, t, eps_norm,
                                               eps_ang, half_space, normalize, scale);
    return {e.to(out_dt), gx2.to(x_in.scalar_type()), gy2.to(y_in.scalar_type())};
  }
  return {energy.to(out_dt), gx.to(x_in.scalar_type()), gy.to(y_in.scalar_type())};
}

HSU_ISA_END
}  // namespace hsu
