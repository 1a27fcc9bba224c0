// The CPU self-energy kernel for D <= 4: points on a circle or a low-dimensional sphere (the Thomson problem,
// spherical codes, D = 3 embeddings). There the O(N^2 D) products are cheap and the per-pair arithmetic sets
// the speed, so this kernel spends as little as it can per pair:
//
//  * symmetric: every unordered pair {i, j} is visited once and updates both rows;
//  * direct: no GEMM, no N x N tile in memory. Rows are kept as float64 coordinate arrays (one array per
//    coordinate, [D][N]), and each row i sweeps a block of columns j with ATen's Vectorized<double> (AVX-512,
//    AVX2 or the portable implementation, chosen from the compiler's target: -march=native, HSU_CPU_ARCH);
//  * precise: squared distances come from coordinate differences in float64, never from 2 - 2g, and the
//    gradient is accumulated in float64 in terms of the same differences (csrc/hsu_small_pair.h), so nearly
//    parallel and nearly antipodal rows keep their digits;
//  * the per-pair terms phi, phi' are the shared ones of csrc/hsu_pair.h, vectorized by the compiler (omp
//    simd) over a buffer of one row's distances. For float32 inputs of normalized rows, Riesz (s <= 32) and
//    log kinds, they are evaluated in float (twice the lanes of double: this pass sets the speed), where no
//    term can underflow (d^2 <= 6); a run of pairs whose float terms are not all finite (a term or derivative
//    beyond float32, e.g. Riesz duplicates with a tiny eps_norm) is evaluated again in float64. Otherwise in
//    float64 (the angular kinds' float terms lose a few ulps more than the general kernel on nearly parallel
//    rows).
//
// Close pairs of float64 rows: differences of rounded float64 unit rows lose the digits of a nearly parallel
// (or, where antipodes enter: half-space or the angular kinds, nearly antipodal) pair that the float64 bar
// of the property suite (tests/test_properties.py) asks for. So, as the general kernel does (hsu_pair.h,
// close_tau<double, double>: 1 - |g| below 2^-10, here d2m or d2p below 2^-9), the pair-math pass leaves
// such pairs out and each is recomputed on the general kernel's careful path (careful_geom, careful_terms,
// careful_apply), in place, in the order of the sweep. Float32 and half rows, exact in float64, need no
// such pass (their bar is float32's); nor do un-normalized rows, whose differences are the careful path's.
//
// Per row i against a run of columns j (two rows at a time where they share the run), in three passes:
//   geometry:  d2m = |u_i - u_j|^2 + a_i + a_j (and d2p = |u_i + u_j|^2 + a_i + a_j where needed);
//   pair math: f (phi, plus phi(-g) in half-space mode) summed into e_i, and the coefficients cm, cp;
//   update:    the gradient accumulators of row i (in registers) and of the columns j (in memory).
//   the gradient as A and K of hsu_small_pair.h (normalized: dE/du = A + K u).
//
// Work split and determinism: rows in blocks (block_rows: 64, 128 or 256 by N), a tile is a pair of blocks
// (I <= J) of one batch entry, and the tiles, in a fixed order, are cut into at most kMaxParts parts of about
// equal work (make_plan: a function of B and N only). Each part accumulates into buffers of its own, the
// threads take parts in any order, and the parts' buffers are added in part order afterwards: every sum has
// the same terms in the same order on any number of threads, so results are bitwise the same.

// ATen's Vectorized picks its implementation from CPU_CAPABILITY_* macros, which torch defines only when it
// compiles its own per-ISA kernel files. This file is compiled for the machine it runs on, so it picks the
// implementation from the compiler's target; the inline namespace gets a name of its own, so that none of
// its symbols can be confused with torch's copies built for another ISA.
// (The portable build's AVX2 and AVX-512 copies set the macro themselves: csrc/cpu/isa/hsu_isa_*.h.)
#if defined(HSU_ISA_NS) && !defined(CPU_CAPABILITY_AVX512) && !defined(CPU_CAPABILITY_AVX2)
#error "an instruction-set copy must name its ATen vector implementation (csrc/cpu/isa/hsu_isa_*.h)"
#elif defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY_AVX2 1
#endif
#ifdef HSU_ISA_NS  // one name per compiled instruction set (see csrc/hsu_isa.h)
#define HSU_CAT2(a, b) a##b
#define HSU_CAT(a, b) HSU_CAT2(a, b)
#define CPU_CAPABILITY HSU_CAT(hsu_small_d_, HSU_ISA_NS)
#else
#define CPU_CAPABILITY hsu_small_d
#endif

#include "hsu_cpu_small.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "../hsu_kinds.h"
#include "../hsu_pair.h"
#include "../hsu_small_pair.h"

namespace hsu {

extern std::atomic<bool> g_close_pair_check;  // csrc/cpu/hsu_cpu_dispatch.cpp: the benchmark's switch

HSU_ISA_BEGIN

namespace {

using Vec = at::vec::Vectorized<double>;
constexpr int64_t kLanes = Vec::size();

// Rows per block. 256 keeps a block's coordinates, accumulators and pair buffers in L1/L2; smaller N uses
// smaller blocks, so that its tiles can still be cut into parts of about equal work. A function of N only
// (never of the thread count), so the partition, and with it the result, is the same on any machine.
constexpr int64_t kMaxBlock = 256;
static_assert(kMaxBlock % 8 == 0, "buffers hold whole vectors");

int64_t block_rows(int64_t n) {
  return n >= 4096 ? 256 : n >= 1024 ? 128 : 64;
}

// One batch entry's rows, float64, one array per coordinate.
struct Rows {
  const double* u;  // [D][n]: u_i (normalized) or x_i
  const double* a;  // [n]: a_i = eps_norm / (|w_i|^2 + eps_norm) (normalized only)
  double* g;        // [D][n]: gradient accumulators G (or A, see update)
  double* k;        // [n]: accumulators K (normalized float64 only, see update)
  double* e;        // [n]: energy of the pairs attributed to row i
  int64_t n;
  // The close pairs' careful path (float64 normalized rows with the check on; otherwise w is null):
  const double* w;  // [n][D]: the rows as given
  const double* r;  // [n]: 1 / sqrt(|w_i|^2 + eps_norm)
  double* rad;      // [n]: accumulators of the careful pairs' radial coefficients times a_i
  const Params<double>* pd;  // the parameters in double (careful path; runs whose float terms are not finite)
};

// Calls f(integral_constant<int, 0>), ..., f(integral_constant<int, N - 1>). The loops over coordinates and
// rows are written with it, so that every index into the small arrays of vectors below is a constant and
// the compiler keeps those vectors in registers (with a run-time index they stay in memory, where every
// store to a double* may alias them: __m512d is a may_alias type).
template <int N, typename F>
inline __attribute__((always_inline)) void static_for(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    (f(std::integral_constant<int, I>{}), ...);
  }(std::make_integer_sequence<int, N>{});
}

// Loads and stores of a run's whole vectors (FULL) and of its tail (cnt < kLanes lanes; loads zero the rest).
template <bool FULL>
inline __attribute__((always_inline)) Vec load(const double* p, int64_t cnt) {
  return FULL ? Vec::loadu(p) : Vec::loadu(p, cnt);
}
template <bool FULL>
inline __attribute__((always_inline)) void store(const Vec& v, double* p, int64_t cnt) {
  if (FULL) v.store(p);
  else v.store(p, static_cast<int>(cnt));
}

// Runs body(FULL, k, cnt) over the vectors of [0, m): the whole ones, then the tail, so that the main loop
// has no per-load test of the count.
template <typename F>
inline __attribute__((always_inline)) void over_vectors(int64_t m, F&& body) {
  int64_t k = 0;
  for (; k + kLanes <= m; k += kLanes) body(std::true_type{}, k, kLanes);
  if (k < m) body(std::false_type{}, k, m - k);
}

// The sum of a vector's lanes, in lane order.
inline double lane_sum(Vec v) {
  alignas(64) double lanes[kLanes];
  v.store(lanes);
  double s = 0.0;
  for (int64_t l = 0; l < kLanes; ++l) s += lanes[l];
  return s;
}

// Geometry pass: d2m[k] (and d2p[k] when BOTH) for columns j + k, k < m. The buffers hold whole vectors;
// loads past m read zeros (Vectorized::loadu with a count).
template <int D, bool NORM, bool BOTH>
void geometry(const Rows& r, int64_t i, int64_t j, int64_t m, double* __restrict d2m, double* __restrict d2p) {
  const double* uc = r.u + j;
  const int64_t n = r.n;
  Vec ui[D];
  static_for<D>([&](auto d) { ui[d] = Vec(r.u[d * n + i]); });
  const double* ac = NORM ? r.a + j : nullptr;
  const Vec ai(NORM ? r.a[i] : 0.0);
  over_vectors(m, [&](auto full, int64_t k, int64_t cnt) __attribute__((always_inline)) {
    constexpr bool F = decltype(full)::value;
    Vec sm(0.0), sp(0.0);
    static_for<D>([&](auto d) {
      const Vec uj = load<F>(uc + d * n + k, cnt);
      const Vec dm = ui[d] - uj;
      sm = at::vec::fmadd(dm, dm, sm);
      if constexpr (BOTH) {
        const Vec dp = ui[d] + uj;
        sp = at::vec::fmadd(dp, dp, sp);
      }
    });
    if constexpr (NORM) {
      const Vec aa = ai + load<F>(ac + k, cnt);
      sm = sm + aa;
      sp = sp + aa;
    }
    sm.store(d2m + k);
    if constexpr (BOTH) sp.store(d2p + k);
  });
}

// Whether a pair is close (see the file's header): d2m, or d2p where antipodes enter, below thr (0: none is).
template <int64_t KIND, bool HS>
inline bool is_close(double d2m, double d2p, double thr) {
  constexpr bool kAnti = HS || KindTraits<KIND>::angle;
  return d2m < thr || (kAnti && d2p < thr);
}

// Pair-math pass: the energy of m pairs (returned) and their coefficients cm[k], cp[k] (csrc/hsu_small_pair.h),
// with phi and phi' in T (double: see the file's header), cm and cp apart for the A, K accumulators. Close
// pairs (is_close with thr) get no energy and coefficients 0, and are counted in `close`.
template <typename T, int64_t KIND, bool HS, bool NORM, int MODE, bool CHECK>
double pair_math(const Params<T>& p, int64_t m, const double* d2m, const double* d2p, double thr, double* cm,
                 double* cp, int64_t& close, double& csum) {
  constexpr bool kBoth = HS || KindTraits<KIND>::angle;  // whether d2p was computed
  double esum = 0.0, cs = 0.0;
  int64_t nclose = 0;
#pragma omp simd reduction(+ : esum, nclose, cs)
  for (int64_t k = 0; k < m; ++k) {
    T f, c, c2;
    small_pair<KIND, HS, NORM, MODE, T>(p.s, p.t, p.eps_ang, static_cast<T>(d2m[k]),
                                        static_cast<T>(kBoth ? d2p[k] : d2m[k]), f, c, c2);
    // the close-pair test only where a careful path exists (CHECK: float64 rows); without it the loop is
    // the plain vectorized pair math
    const bool cl = CHECK && is_close<KIND, HS>(d2m[k], kBoth ? d2p[k] : d2m[k], thr);
    // the coefficients' sum: read only after float terms (their finiteness), so not formed for double ones
    if constexpr (!std::is_same_v<T, double>) cs += static_cast<double>(c) + (HS ? static_cast<double>(c2) : 0.0);
    cm[k] = cl ? 0.0 : static_cast<double>(c);
    if constexpr (HS) cp[k] = cl ? 0.0 : static_cast<double>(c2);
    esum += cl ? 0.0 : static_cast<double>(f);
    nclose += cl ? 1 : 0;
  }
  close = nclose;
  csum = cs;  // float terms: not finite if a coefficient is not (or their sum overflows); double terms: 0
  return esum;
}

// The close pairs of row i against columns j + k, k < m, that pair_math left out: each on the general
// kernel's careful path (hsu_pair.h), in column order, into the part's buffers (A of both rows, the radial
// coefficients, row i's energy). Normalized float64 rows only (Rows::w).
template <int D, int64_t KIND, bool HS>
void careful_run(const Params<double>& p, const Rows& r, int64_t i, int64_t j, int64_t m, double thr,
                 const double* d2m, const double* d2p) {
  constexpr bool kBoth = HS || KindTraits<KIND>::angle;
  const int64_t n = r.n;
  const double* wi = r.w + i * D;
  for (int64_t k = 0; k < m; ++k) {
    if (!is_close<KIND, HS>(d2m[k], kBoth ? d2p[k] : d2m[k], thr)) continue;
    const int64_t c = j + k;
    const double* wc = r.w + c * D;
    const CarefulGeom q = careful_geom<true>(wi, wc, D, r.r[i], r.r[c], r.a[i], r.a[c]);
    double e;
    const CarefulCoef co = careful_terms<KIND, HS, true>(p, 1.0, q, e);
    double acc_i[D] = {}, acc_c[D] = {};
    careful_apply<true>(co, q.sign, wi, wc, D, r.r[i], r.r[c], r.a[i], r.a[c], acc_i, acc_c, r.rad[i], r.rad[c]);
    r.e[i] += e;
    for (int d = 0; d < D; ++d) {
      r.g[d * n + i] += acc_i[d];
      r.g[d * n + c] += acc_c[d];
    }
  }
}

// Update pass for R consecutive rows i, i+1, ... against the same m columns j (their coefficients in
// cm[rho], cp[rho]; a column a row must skip has coefficient 0): the columns' accumulators, loaded and
// stored once for all R rows, and each row's own sums returned in gi[rho][D] (and ki[rho]).
// Normalized: G = A + K u, with A_i += c_m (u_j - u_i) + c_p (u_i + u_j) and K_i += c_m - c_p, so that a
// nearly parallel (or antipodal) pair adds its large coefficient to K, which the epilogue never cancels
// against anything, and only c times a small difference to A.
template <int D, bool HS, bool NORM, int R>
void update(const Rows& r, int64_t i, int64_t j, int64_t m, const double* const* cm, const double* const* cp,
            double (*gi)[D], double* ki) {
  const int64_t n = r.n;
  const double* uc = r.u + j;
  double* gc = r.g + j;
  double* kc = NORM ? r.k + j : nullptr;
  Vec ui[R][D], acc[R][D], kacc[R];
  static_for<R>([&](auto q) {
    static_for<D>([&](auto d) {
      ui[q][d] = Vec(r.u[d * n + i + q]);
      acc[q][d] = Vec(0.0);
    });
    kacc[q] = Vec(0.0);
  });
  over_vectors(m, [&](auto full, int64_t k, int64_t cnt) __attribute__((always_inline)) {
    constexpr bool F = decltype(full)::value;
    Vec c[R], c2[R];
    static_for<R>([&](auto q) {
      c[q] = load<F>(cm[q] + k, cnt);  // zero past cnt: those lanes add nothing
      c2[q] = HS ? load<F>(cp[q] + k, cnt) : Vec(0.0);
    });
    if constexpr (NORM) {
      Vec kj = load<F>(kc + k, cnt);
      static_for<R>([&](auto q) {
        const Vec kk = HS ? c[q] - c2[q] : c[q];
        kacc[q] = kacc[q] + kk;
        kj = kj + kk;
      });
      store<F>(kj, kc + k, cnt);
    }
    static_for<D>([&](auto d) {
      const Vec uj = load<F>(uc + d * n + k, cnt);
      Vec gj = load<F>(gc + d * n + k, cnt);
      static_for<R>([&](auto q) {
        // un-normalized: G_i += c (x_i - x_j) + c2 (x_i + x_j), G_j += c (x_j - x_i) + c2 (x_i + x_j);
        // normalized: the same with the signs of c flipped (c_m multiplies u_j - u_i in A_i)
        const Vec cdm = c[q] * (ui[q][d] - uj);
        acc[q][d] = NORM ? acc[q][d] - cdm : acc[q][d] + cdm;
        gj = NORM ? gj + cdm : gj - cdm;
        if constexpr (HS) {
          const Vec dp = ui[q][d] + uj;
          acc[q][d] = at::vec::fmadd(c2[q], dp, acc[q][d]);
          gj = at::vec::fmadd(c2[q], dp, gj);
        }
      });
      store<F>(gj, gc + d * n + k, cnt);
    });
  });
  static_for<R>([&](auto q) {
    static_for<D>([&](auto d) { gi[q][d] = lane_sum(acc[q][d]); });
    ki[q] = lane_sum(kacc[q]);
  });
}

// One tile: rows [i0, i1) against rows [j0, j1), or a block against itself (pairs j > i). Rows go two at a
// time through the update pass (half the loads and stores of the columns' accumulators); in a diagonal
// tile the second row's run starts one column later, which its coefficient buffer marks with a 0.
template <typename T, int D, int64_t KIND, bool HS, bool NORM, int MODE>
void tile(const Params<T>& p, const Rows& r, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  constexpr bool kBoth = HS || KindTraits<KIND>::angle;
  constexpr bool kSplit = NORM;
  constexpr int64_t kBuf = kMaxBlock + kLanes;  // room for the second row's runs shifted by one
  alignas(64) double d2m[2][kBuf], d2p[2][kBuf], cm[2][kBuf], cp[2][kBuf];
  const double* cms[2] = {cm[0], cm[1]};
  const double* cps[2] = {cp[0], cp[1]};
  const bool diag = i0 == j0;
  // close pairs: 1 - |g| below close_tau, i.e. a squared distance (to u_j or -u_j) below twice it
  const double thr = NORM && r.w ? 2.0 * close_tau<double, double>() : 0.0;
  auto careful = [&](int64_t row, int64_t j, int64_t m, int64_t close, const double* dm, const double* dp) {
    if constexpr (NORM) {
      if (close > 0) careful_run<D, KIND, HS>(*r.pd, r, row, j, m, thr, dm, dp);
    }
  };
  // The pair terms of a run in T; in float, a run with a term that is not finite is evaluated in double.
  auto terms = [&](int64_t m, const double* dm, const double* dp, double* c1, double* c2, int64_t& close) {
    double csum;
    if constexpr (std::is_same_v<T, double>) {
      if (thr > 0) return pair_math<double, KIND, HS, NORM, MODE, true>(p, m, dm, dp, thr, c1, c2, close, csum);
      return pair_math<double, KIND, HS, NORM, MODE, false>(p, m, dm, dp, thr, c1, c2, close, csum);
    } else {
      // float rows have no careful path (thr = 0); a run whose float terms are not all finite: in double
      const double es = pair_math<T, KIND, HS, NORM, MODE, false>(p, m, dm, dp, thr, c1, c2, close, csum);
      if (std::isfinite(es) && std::isfinite(csum)) return es;
      return pair_math<double, KIND, HS, NORM, MODE, false>(*r.pd, m, dm, dp, thr, c1, c2, close, csum);
    }
  };
  auto finish = [&](int64_t i, int R, const double (*gi)[D], const double* ki) {
    for (int q = 0; q < R; ++q) {
      for (int d = 0; d < D; ++d) r.g[d * r.n + i + q] += gi[q][d];
      if constexpr (kSplit) r.k[i + q] += ki[q];
    }
  };
  int64_t i = i0;
  for (; i + 1 < i1; i += 2) {
    const int64_t j = diag ? i + 1 : j0;
    const int64_t m = j1 - j;
    const int64_t shift = diag ? 1 : 0;  // row i + 1 starts at column j + shift
    if (m - shift <= 0) break;
    int64_t close;
    geometry<D, NORM, kBoth>(r, i, j, m, d2m[0], d2p[0]);
    r.e[i] += terms(m, d2m[0], d2p[0], cm[0], cp[0], close);
    careful(i, j, m, close, d2m[0], d2p[0]);
    geometry<D, NORM, kBoth>(r, i + 1, j + shift, m - shift, d2m[1] + shift, d2p[1] + shift);
    r.e[i + 1] += terms(m - shift, d2m[1] + shift, d2p[1] + shift, cm[1] + shift, cp[1] + shift, close);
    careful(i + 1, j + shift, m - shift, close, d2m[1] + shift, d2p[1] + shift);
    cm[1][0] = shift ? 0.0 : cm[1][0];
    cp[1][0] = shift ? 0.0 : cp[1][0];
    double gi[2][D], ki[2];
    update<D, HS, NORM, 2>(r, i, j, m, cms, cps, gi, ki);
    finish(i, 2, gi, ki);
  }
  for (; i < i1; ++i) {
    const int64_t j = diag ? i + 1 : j0;
    const int64_t m = j1 - j;
    if (m <= 0) continue;
    int64_t close;
    geometry<D, NORM, kBoth>(r, i, j, m, d2m[0], d2p[0]);
    r.e[i] += terms(m, d2m[0], d2p[0], cm[0], cp[0], close);
    careful(i, j, m, close, d2m[0], d2p[0]);
    double gi[1][D], ki[1];
    update<D, HS, NORM, 1>(r, i, j, m, cms, cps, gi, ki);
    finish(i, 1, gi, ki);
  }
}

// The partition of the work. Tiles (bb, I, J <= ... ) in a fixed order (batch entry, then I, then J >= I)
// are cut into `parts` contiguous runs of about equal pair counts. Each part accumulates into buffers of
// its own (e, G, K for every row); the parts run in parallel, taken by the threads in any order, and are
// then added in part order. Nothing depends on the thread count or on which thread ran a part.
struct Tile {
  int64_t bb, I, J;
};

struct Plan {
  int64_t n, bk;
  std::vector<Tile> tiles;
  std::vector<int64_t> first;  // part q runs tiles [first[q], first[q + 1])
  int64_t parts() const { return static_cast<int64_t>(first.size()) - 1; }
};

// Rows per task of the O(N) loops (statistics, sums of the parts, epilogue): tens of nanoseconds per row,
// so below this many rows a fork would cost more than the loop.
constexpr int64_t kRowGrain = 1 << 14;
// Float pair terms (see the file's header) up to this exponent: a normalized pair has d^2 <= 6, and 6^(-16)
// and pi^(-32) stay far above float32's smallest normal number, so no term underflows.
constexpr double kFloatTermsMaxS = 32.0;

// Whether the pair terms of normalized float32 rows may be evaluated in float: the kinds whose float terms are
// known to stay in range there (Riesz with s <= kFloatTermsMaxS, log). A list, not a trait: any other kind (a
// new one too) is evaluated in double until its float terms have been checked.
bool float_terms_ok(int64_t kind, double s) { return (kind == kRiesz || kind == kLog) && s <= kFloatTermsMaxS; }

// At most this many parts (their buffers cost (D + 2) doubles per row each), and at least this many pairs
// per part (about a millisecond of work: below that, forking costs more than it saves, and far more on a
// machine whose cores other processes share, where a waiting thread may wait for a whole time slice).
constexpr int64_t kMaxParts = 8;
constexpr int64_t kMinPartPairs = 1 << 18;

Plan make_plan(int64_t B, int64_t n) {
  Plan plan;
  plan.n = n;
  plan.bk = block_rows(n);
  const int64_t nblk = (n + plan.bk - 1) / plan.bk;
  std::vector<int64_t> weight;
  for (int64_t bb = 0; bb < B; ++bb)
    for (int64_t I = 0; I < nblk; ++I)
      for (int64_t J = I; J < nblk; ++J) {
        const int64_t bi = std::min(n, (I + 1) * plan.bk) - I * plan.bk;
        const int64_t bj = std::min(n, (J + 1) * plan.bk) - J * plan.bk;
        plan.tiles.push_back({bb, I, J});
        weight.push_back(I == J ? bi * (bi - 1) / 2 : bi * bj);
      }
  int64_t total = 0;
  for (int64_t w : weight) total += w;
  const int64_t parts = std::clamp<int64_t>(total / kMinPartPairs, 1, kMaxParts);
  plan.first.assign(1, 0);
  int64_t acc = 0;
  for (int64_t t = 0; t < static_cast<int64_t>(weight.size()); ++t) {
    // a part ends once it holds its share of the pairs
    acc += weight[t];
    const int64_t q = static_cast<int64_t>(plan.first.size());
    if (q < parts && acc * parts >= q * total) plan.first.push_back(t + 1);
  }
  plan.first.push_back(static_cast<int64_t>(plan.tiles.size()));
  return plan;
}

// The float64 rows and the parts' accumulators: part q's G is g + q * B * D * n, and so on.
struct Work {
  const double* u;  // [B][D][n]
  const double* a;  // [B][n] (normalized) or nullptr
  double* g;        // [parts][B][D][n]
  double* k;        // [parts][B][n] (normalized float64) or nullptr
  double* e;        // [parts][B][n]
  int64_t B, D, n;
  const double* w;  // [B][n][D]: float64 rows as given, for the careful path, or nullptr (no close-pair check)
  const double* r;  // [B][n]: 1 / sqrt(|w_i|^2 + eps_norm)
  double* rad;      // [parts][B][n] (with w)
  const Params<double>* pd;

  Rows rows(int64_t q, int64_t bb) const {
    const int64_t part_rows = q * B * n + bb * n;
    return Rows{u + bb * D * n,
                a ? a + bb * n : nullptr,
                g + D * part_rows,
                k ? k + part_rows : nullptr,
                e + part_rows,
                n,
                w ? w + bb * n * D : nullptr,
                w ? r + bb * n : nullptr,
                w ? rad + part_rows : nullptr,
                pd};
  }
};

template <typename T, int D, int64_t KIND, bool HS, bool NORM, int MODE>
void all_pairs(const Params<T>& p, const Plan& plan, const Work& wk) {
  const int64_t parts = plan.parts();
  auto run_part = [&](int64_t q) {
    for (int64_t t = plan.first[q]; t < plan.first[q + 1]; ++t) {
      const Tile& tl = plan.tiles[t];
      tile<T, D, KIND, HS, NORM, MODE>(p, wk.rows(q, tl.bb), tl.I * plan.bk, std::min(plan.n, (tl.I + 1) * plan.bk),
                                       tl.J * plan.bk, std::min(plan.n, (tl.J + 1) * plan.bk));
    }
  };
  if (parts == 1) return run_part(0);
  // Threads take the next part as they finish one: a thread slowed by other work on the machine
  // (or given less of the core) takes fewer parts, where a fixed split would make the others wait for it.
  std::atomic<int64_t> next{0};
  at::parallel_for(0, parts, 1, [&](int64_t, int64_t) {
    for (int64_t q = next.fetch_add(1); q < parts; q = next.fetch_add(1)) run_part(q);
  });
}

// Compile-time dispatch: dimension, then kind, half-space, normalization and exponent mode (hsu_pair.h's
// dispatch_pass). The log-sum kind is not served here (small_d_serves).
template <typename T, int D>
void dispatch_kind(const Params<T>& p, const Plan& plan, const Work& wk) {
  dispatch_pass(p, [&]<int64_t KIND, bool HS, bool NORM, int MODE>() {
    if constexpr (KindTraits<KIND>::logsum) kind_error(KIND, "the small-D kernel does not serve the log-sum kind");
    else all_pairs<T, D, KIND, HS, NORM, MODE>(p, plan, wk);
  });
}

template <typename T>
void dispatch_dim(const Params<T>& p, const Plan& plan, const Work& wk) {
  switch (wk.D) {
    case 1: return dispatch_kind<T, 1>(p, plan, wk);
    case 2: return dispatch_kind<T, 2>(p, plan, wk);
    case 3: return dispatch_kind<T, 3>(p, plan, wk);
    default: return dispatch_kind<T, 4>(p, plan, wk);
  }
}

template <typename T>
void energy_grad_small(const at::Tensor& w, int64_t kind, double s, double t, double eps_norm, double eps_ang,
                       bool half_space, bool normalize, double out_scale, at::Tensor& energy, at::Tensor& grad) {
  const int64_t B = w.size(0), n = w.size(1), D = w.size(2);
  const Params<double> pd{kind, s, t, eps_ang, half_space, normalize};
  const T* wp = w.data_ptr<T>();
  // Per row, in float64: the scale-safe statistics of hsu_pair.h's row_norm (normalized: r = 1 / sqrt(|w|^2 +
  // eps_norm) and a = eps_norm r^2, for any finite row) or |w|^2; coordinates transposed to [B][D][n].
  std::vector<double> sq(B * n), st(B * n), u(B * D * n), a(normalize ? B * n : 0);
  std::vector<char> finite(B * n);
  at::parallel_for(0, B * n, kRowGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t bb = r / n, i = r % n;
      bool fin = true;
      for (int64_t d = 0; d < D; ++d) fin = fin && std::isfinite(static_cast<double>(wp[r * D + d]));
      finite[r] = fin;
      if (normalize) row_norm(wp + r * D, D, eps_norm, st[r], a[r]);
      else st[r] = sq[r] = row_sq(wp + r * D, D);
      const double scale = normalize ? st[r] : 1.0;
      for (int64_t d = 0; d < D; ++d) u[(bb * D + d) * n + i] = static_cast<double>(wp[r * D + d]) * scale;
    }
  });
  for (int64_t r = 0; r < B * n; ++r) {
    TORCH_CHECK_VALUE(finite[r] && (normalize || std::isfinite(sq[r])),
                      "w contains NaN or Inf (or a row whose squared norm overflows)");
    TORCH_CHECK_VALUE(!(normalize && eps_norm == 0.0 && !std::isfinite(st[r])),
                      "w has a zero row (or one below 1e-300), which has no direction when eps_norm=0");
  }
  const Plan plan = make_plan(B, n);
  const int64_t parts = plan.parts();
  const bool split = normalize;  // the pass runs in double: normalized rows accumulate A and K
  // float64 normalized rows: close pairs on the careful path (see the file's header)
  const bool check = std::is_same_v<T, double> && normalize && g_close_pair_check.load();
  std::vector<double> g(parts * B * D * n, 0.0), kacc(split ? parts * B * n : 0, 0.0), e(parts * B * n, 0.0);
  std::vector<double> rad(check ? parts * B * n : 0, 0.0);
  const double* w64 = nullptr;
  if constexpr (std::is_same_v<T, double>) w64 = wp;
  const Work wk{u.data(), normalize ? a.data() : nullptr, g.data(), split ? kacc.data() : nullptr, e.data(), B, D, n,
                check ? w64 : nullptr, st.data(), check ? rad.data() : nullptr, &pd};
  if (std::is_same_v<T, float> && normalize && float_terms_ok(kind, s)) {
    const Params<float> pf{kind, static_cast<float>(s), static_cast<float>(t), static_cast<float>(eps_ang), half_space,
                           normalize};
    dispatch_dim<float>(pf, plan, wk);
  } else {
    dispatch_dim<double>(pd, plan, wk);
  }
  // The parts' sums, added in part order, into part 0's buffers.
  if (parts > 1)
    at::parallel_for(0, B * n, kRowGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t q = 1; q < parts; ++q)
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t bb = r / n, i = r % n;
          for (int64_t d = 0; d < D; ++d) g[(bb * D + d) * n + i] += g[((q * B + bb) * D + d) * n + i];
          if (split) kacc[r] += kacc[q * B * n + r];
          if (check) rad[r] += rad[q * B * n + r];
          e[r] += e[q * B * n + r];
        }
    });

  // Row epilogue in float64: dE/dw from G (hsu_pair.h's row_grad) plus the half-space self pair; the output
  // scale (1/pairs for a mean) applied here, to sums formed in float64.
  const double scale = grad_scale<double>(true, half_space) * out_scale;
  std::vector<double> ediag(B * n, 0.0);
  T* gp = grad.data_ptr<T>();
  at::parallel_for(0, B * n, kRowGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t bb = r / n, i = r % n;
      double wr[kSmallMaxD], gr[kSmallMaxD], out[kSmallMaxD];
      for (int64_t d = 0; d < D; ++d) {
        wr[d] = static_cast<double>(wp[r * D + d]);
        gr[d] = g[(bb * D + d) * n + i];
      }
      double k = 0.0;
      if (half_space) {
        diag_term(pd, normalize ? a[r] : sq[r], ediag[r], k);
        k *= out_scale;
      }
      double ur[kSmallMaxD];
      for (int64_t d = 0; d < D; ++d) ur[d] = u[(bb * D + d) * n + i];
      small_row_grad(normalize, wr, ur, normalize ? a[r] : 0.0, st[r], gr, split ? kacc[r] : 0.0,
                     check ? rad[r] : 0.0, scale, k, D, out);
      for (int64_t d = 0; d < D; ++d) gp[r * D + d] = static_cast<T>(out[d]);
    }
  });
  // Each unordered pair once in e; the half-space energy counts {i, j}, {-i, -j}, {i, -j}, {-i, j}.
  const double pair_weight = half_space ? 2.0 : 1.0;
  double* ep = energy.data_ptr<double>();
  for (int64_t bb = 0; bb < B; ++bb) {
    double pairs = 0.0, diag = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      pairs += e[bb * n + i];
      diag += ediag[bb * n + i];
    }
    ep[bb] = out_scale * (pair_weight * pairs + diag);
  }
}

}  // namespace

bool small_d_serves(const at::Tensor& w, int64_t kind) {
  return w.dim() == 3 && w.size(2) >= 1 && w.size(2) <= kSmallMaxD && !kind_info(kind).logsum;
}

std::tuple<at::Tensor, at::Tensor> energy_grad_small_cpu(const at::Tensor& w_in, int64_t kind, double s, double t,
                                                         double eps_norm, double eps_ang, bool half_space,
                                                         bool normalize, double scale) {
  TORCH_CHECK(small_d_serves(w_in, kind), "energy_grad_small_cpu called for D = ", w_in.size(-1), ", kind ", kind);
  const auto dt = w_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor w = w_in.to(dt).contiguous();
  at::Tensor energy = at::empty({w.size(0)}, w.options().dtype(at::kDouble));
  at::Tensor grad = at::empty_like(w);
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "hsu_energy_grad_small_cpu", [&] {
    energy_grad_small<scalar_t>(w, kind, s, t, eps_norm, eps_ang, half_space, normalize, scale, energy, grad);
  });
  return {energy.to(dt), grad.to(w_in.scalar_type())};
}

HSU_ISA_END
}  // namespace hsu
