// Per-pair math of the hyperspherical energies (docs/spec.md §2-§5), shared by every compiled backend.
//
// One definition of phi and phi' for host and device: the CPU kernel includes this header as plain C++,
// the CUDA kernel includes it unchanged and gets __host__ __device__ functions through HSU_HD.
// Nothing here allocates or touches memory: each function maps a few scalars to a few scalars.
#pragma once

#include <cmath>
#include <cstdint>
#include "hsu_isa.h"
#include "hsu_kinds.h"  // the kinds (codes, traits, HSU_KIND_SWITCH) and HSU_HD

namespace hsu {
HSU_ISA_BEGIN

template <typename T>
struct Params {
  int64_t kind;
  T s;        // Riesz / angular exponent
  T t;        // Gaussian temperature
  T eps_ang;  // angular offset
  bool half_space;
  bool normalize;
};

// Scalar helpers spelled out so that host and device pick the right overload for float and double.
HSU_HD float hsu_sqrt(float x) { return sqrtf(x); }
HSU_HD double hsu_sqrt(double x) { return sqrt(x); }
HSU_HD double hsu_log(double x) { return log(x); }
HSU_HD double hsu_exp(double x) { return exp(x); }
HSU_HD double hsu_acos(double x) { return acos(x); }

template <typename T>
HSU_HD T hsu_max(T a, T b) { return a > b ? a : b; }
template <typename T>
HSU_HD T hsu_min(T a, T b) { return a < b ? a : b; }

// float exp/log/acos. On the device these are the CUDA intrinsics. On the host they are short
// polynomials made of arithmetic and bit operations only, so that a loop calling them still vectorizes
// (libm calls stop GCC's vectorizer unless -ffast-math, which would also break inf/NaN semantics).
// Accuracy, measured against double libm over their ranges: a few ulp (csrc/tests checks it).
#if defined(__CUDA_ARCH__)
HSU_HD float hsu_log(float x) { return logf(x); }
HSU_HD float hsu_exp(float x) { return expf(x); }
HSU_HD float hsu_acos(float x) { return acosf(x); }
#else
inline float bits_to_float(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof u);
  return u;
}

// exp(x) = 2^n e^r with n = round(x / ln 2), |r| <= ln2/2, e^r by its Taylor series to r^7.
inline float hsu_exp(float x) {
  const float xc = hsu_min(hsu_max(x, -87.3f), 88.37f);  // 2^n stays a normal float
  const float n = __builtin_rintf(xc * 1.44269504088896341f);
  const float r = (xc - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float scale = bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
  float y = p * scale;
  y = x < -87.3f ? 0.0f : y;
  return x > 88.37f ? static_cast<float>(INFINITY) : y;
}

// log(x) = e ln2 + log(m), m in [sqrt(1/2), sqrt(2)), log(m) = 2 atanh(t), t = (m-1)/(m+1), |t| <= 0.172,
// by the odd series to t^11. Subnormal inputs are scaled up first; 0 gives -inf, inf gives inf.
inline float hsu_log(float x) {
  const bool tiny = x < 1.17549435e-38f;
  const float xs = tiny ? x * 8388608.0f : x;  // 2^23
  const uint32_t u = float_to_bits(xs);
  int32_t e = static_cast<int32_t>((u >> 23) & 0xff) - 127;
  float m = bits_to_float((u & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const float t = (m - 1.0f) / (m + 1.0f);
  const float t2 = t * t;
  float p = 1.0f / 11.0f;
  p = p * t2 + 1.0f / 9.0f;
  p = p * t2 + 1.0f / 7.0f;
  p = p * t2 + 1.0f / 5.0f;
  p = p * t2 + 1.0f / 3.0f;
  p = p * t2 + 1.0f;
  const float ef = static_cast<float>(e) - (tiny ? 23.0f : 0.0f);
  float y = ef * 0.693147180559945309f + 2.0f * t * p;
  y = x == 0.0f ? -static_cast<float>(INFINITY) : y;
  y = x == static_cast<float>(INFINITY) ? x : y;
  return x < 0.0f ? static_cast<float>(NAN) : y;
}

// asin(z) for |z| <= 1/2 by its Taylor series sum_k (2k)! / (4^k (k!)^2 (2k+1)) z^(2k+1), to z^19
// (the first omitted term is below 1e-8 relative at |z| = 1/2).
inline float asin_small(float z) {
  const float z2 = z * z;
  float p = 0.00976160953f;  // k = 9
  p = p * z2 + 0.01155180089f;
  p = p * z2 + 0.01396484375f;
  p = p * z2 + 0.01735276442f;
  p = p * z2 + 0.02237215909f;
  p = p * z2 + 0.03038194444f;
  p = p * z2 + 0.04464285714f;
  p = p * z2 + 0.075f;
  p = p * z2 + 0.16666666667f;
  p = p * z2 + 1.0f;
  return z * p;
}

// acos(x) = pi/2 - asin(x) for |x| <= 1/2, else 2 asin(sqrt((1-|x|)/2)) reflected for x < 0.
inline float hsu_acos(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float small = 1.57079632679489662f - asin_small(x);
  const float zz = sqrtf(hsu_max(0.5f * (1.0f - ax), 0.0f));
  const float a = 2.0f * asin_small(zz);
  const float large = x < 0.0f ? 3.14159265358979324f - a : a;
  return ax <= 0.5f ? small : large;
}
#endif

// acos(x) given also om = 1 - |x|, computed by the caller in a wider type where it can: for |x| > 1/2,
// acos(|x|) = 2 asin(sqrt(om / 2)), which keeps the digits of nearly parallel rows that x alone has lost.
#if defined(__CUDA_ARCH__)
HSU_HD float hsu_asin(float x) { return asinf(x); }
#else
inline float hsu_asin(float x) { return asin_small(x); }  // only called with |x| <= 1/2
#endif
HSU_HD double hsu_asin(double x) { return asin(x); }

template <typename T>
HSU_HD T hsu_acos_om(T x, T om) {
  const T pi = T(3.14159265358979323846);
  if (x <= T(0.5) && x >= T(-0.5)) return hsu_acos(x);
  const T a = T(2) * hsu_asin(hsu_sqrt(hsu_max(T(0.5) * om, T(0))));
  return x < T(0) ? pi - a : a;
}

// x^(-p) for x >= 0 from exp/log; pow_neg_fixed below avoids them for the common exponents.
template <typename T>
HSU_HD T pow_neg(T x, T p) {
  return x == T(0) ? T(INFINITY) : hsu_exp(-p * hsu_log(x));
}

// Exponent modes: 0 = general, 1 = x^(-1/2), 2 = x^(-1), 3 = x^(-2). Fixed at compile time in the CPU
// kernel's inner loops, chosen at run time elsewhere.
enum PowMode : int { kPowGeneral = 0, kPowRsqrt = 1, kPowRecip = 2, kPowRecip2 = 3 };

template <typename T>
HSU_HD int pow_mode(T p) {
  return p == T(0.5) ? kPowRsqrt : p == T(1) ? kPowRecip : p == T(2) ? kPowRecip2 : kPowGeneral;
}

template <int MODE, typename T>
HSU_HD T pow_neg_fixed(T x, T p) {
  if (MODE == kPowRsqrt) return T(1) / hsu_sqrt(x);
  if (MODE == kPowRecip) return T(1) / x;
  if (MODE == kPowRecip2) return T(1) / (x * x);
  return pow_neg(x, p);
}

// Finite (not inf, not NaN) without a library call, so that loops using it still vectorize.
template <typename T>
HSU_HD bool is_finite(T x) {
  return x - x == T(0);
}

// The distance kinds (KindTraits<KIND>::angle false: Riesz, log, Gaussian), whose energy depends on the
// squared chordal distance d2 only: f(d2) and its derivative df/dd2. d2 is clamped at 0 (rounding can push
// 2 - 2g a hair below zero). MODE is the exponent mode of s/2 (Riesz only).
template <int64_t KIND, int MODE, typename T>
HSU_HD void phi_d2_k(T s, T t, T d2, T& f, T& df) {
  d2 = hsu_max(d2, T(0));
  if constexpr (KIND == kRiesz) {
    // f = d2^(-s/2), df = -(s/2) d2^(-s/2-1) = -(s/2) f / d2, from one division: inv = 1/d2.
    const T half = T(0.5) * s;
    const T inv = T(1) / d2;
    if (MODE == kPowRsqrt) f = hsu_sqrt(inv);
    else if (MODE == kPowRecip) f = inv;
    else if (MODE == kPowRecip2) f = inv * inv;
    else f = pow_neg(d2, half);
    df = -half * f * inv;
  } else if constexpr (KIND == kLog) {
    f = -hsu_log(d2);
    df = T(-1) / d2;
  } else if constexpr (KIND == kGaussian) {
    f = hsu_exp(-t * d2);
    df = -t * f;
  } else {
    static_assert(kNoSuchKind<KIND>, "phi_d2_k: no distance formula for this kind (an angle kind, or a new kind "
                                     "whose phi(d2) is missing here)");
  }
}

// Every kind as a function of the cosine g of two normalized rows: phi(g) and dphi/dg (docs/spec.md §3), given
// also om = 1 - |g|, formed by the caller as accurately as it can (in a wider type, from coordinates for
// close pairs, or in closed form for the half-space self pair): every quantity that cancels near g = +-1
// (2 - 2g, the angle, sin of the angle) is taken from om, never from g. MODE is the exponent mode of s/2
// (Riesz) or s (angular). G is the type g and om arrive in.
template <int64_t KIND, int MODE, typename T, typename G>
HSU_HD void phi_g_om_k(T s, T t, T eps_ang, G g, G om_g, T& f, T& df) {
  if constexpr (KindTraits<KIND>::angle) {
    const T inv_pi = T(0.318309886183790671537767526745028724);
    // |g| < 1 strictly in exact arithmetic (eps_norm sits inside the norm); the clamps only guard
    // rounding and the eps_norm = 0 case, where the derivative would otherwise be infinite times zero.
    const T gc = hsu_min(hsu_max(static_cast<T>(g), T(-1)), T(1));
    const T om = hsu_max(static_cast<T>(om_g), T(0));
    const T a = hsu_acos_om(gc, om) * inv_pi + eps_ang;
    const T sin_t = hsu_sqrt(om * (T(2) - om));  // sqrt(1 - g^2) = sqrt((1-|g|)(1+|g|))
    // d(theta/pi)/dg = -1/(pi sin(theta)); written as a quotient so sin = 0 gives inf, not NaN.
    const T dtheta = -inv_pi / sin_t;
    if constexpr (KIND == kAngular) {
      f = pow_neg_fixed<MODE>(a, s);
      df = -s * f / a * dtheta;  // s/pi (theta/pi + eps)^(-s-1) / sin(theta)
    } else if constexpr (KIND == kAngularLog) {
      f = -hsu_log(a);
      df = -dtheta / a;  // 1/pi / (theta/pi + eps) / sin(theta)
    } else {
      static_assert(kNoSuchKind<KIND>, "phi_g_om_k: no formula for this angle kind");
    }
  } else {
    T fd, dfd;
    // 2 - 2g = 2 om for g >= 0 (where it cancels); for g < 0 it lies in [2, 4] and g alone is accurate.
    const G d2 = g >= G(0) ? G(2) * om_g : G(2) - G(2) * g;
    phi_d2_k<KIND, MODE>(s, t, static_cast<T>(d2), fd, dfd);
    f = fd;
    df = T(-2) * dfd;
  }
}

// As phi_g_om_k with om = 1 - |g| formed from g in G.
template <int64_t KIND, int MODE, typename T, typename G>
HSU_HD void phi_g_k(T s, T t, T eps_ang, G g, T& f, T& df) {
  const G gcl = hsu_min(hsu_max(g, G(-1)), G(1));
  phi_g_om_k<KIND, MODE>(s, t, eps_ang, gcl, G(1) - (gcl < G(0) ? -gcl : gcl), f, df);
}

// Run-time dispatch of phi_g_k / phi_d2_k on the kind (general exponent path). phi_d2 serves the distance
// kinds only.
template <typename T>
HSU_HD void phi_d2(const Params<T>& p, T d2, T& f, T& df) {
  HSU_KIND_SWITCH(p.kind, KIND, [&] {
    if constexpr (KindTraits<KIND>::angle) kind_error(p.kind, "angular kinds need normalize=True");
    else phi_d2_k<KIND, kPowGeneral>(p.s, p.t, d2, f, df);
  });
}

template <typename T>
HSU_HD void phi_g_om(const Params<T>& p, T g, T om, T& f, T& df) {
  HSU_KIND_SWITCH(p.kind, KIND, [&] { phi_g_om_k<KIND, kPowGeneral>(p.s, p.t, p.eps_ang, g, om, f, df); });
}

template <typename T>
HSU_HD void phi_g(const Params<T>& p, T g, T& f, T& df) {
  const T gcl = hsu_min(hsu_max(g, T(-1)), T(1));
  phi_g_om(p, gcl, T(1) - (gcl < T(0) ? -gcl : gcl), f, df);
}

// ---------------------------------------------------------------------------------------------------------
// Close pairs (docs/spec.md §5). A pair is recomputed on the careful path below when its 1 - |g| (normalized) or
// its expanded distance relative to |x_i|^2 + |x_j|^2 (un-normalized) is below close_tau, or when its
// energy or coefficient is not finite in T (a term that overflows float32, e.g. angular s = 50).
//
// close_tau<T, G> by the type T of the result and G of the cosines (the products of the rows):
//  - float cosines (float rows at D > 32 on the CPU, float on the GPU): g carries ~sqrt(D) ulp of float, and
//    1/16 bounds the relative error of 2 - 2g (or of the expanded distance) by 8 sqrt(D) ulp for every pair
//    left on the fast path; random pairs at D > 32 essentially never fall below it;
//  - double cosines of float rows (D <= 32 on the CPU, where the gradient's products are double too): g
//    carries ~sqrt(D) ulp of double, so 2^-20 still leaves 1 - |g| within ~1e-9 relative, well inside a
//    float result; on uniform points at D = 3 only a fraction 2^-20 of the pairs fall below it;
//  - double cosines of double rows: 2^-10 keeps 1 - |g| within ~2e-13 sqrt(D) relative on the fast path.
template <typename T, typename G>
HSU_HD G close_tau();
template <>
HSU_HD float close_tau<float, float>() {
  return 0.0625f;
}
template <>
HSU_HD double close_tau<float, double>() {
  return 9.5367431640625e-07;  // 2^-20
}
template <>
HSU_HD double close_tau<double, double>() {
  return 0.0009765625;  // 2^-10
}

// A normalized pair from its cosine g (in G), every kind with everything fixed at compile time:
//   e = phi(g) (+ phi(-g) in half-space mode), c = cs * dphi/dg (- cs * phi'(-g)): the coefficient of u_j
// in dE/du_i (cs: the share of the output scale applied per pair, see README "Precision"). Returns whether
// the pair needs the careful path.
template <int64_t KIND, bool HS, int MODE, typename T, typename G>
HSU_HD bool pair_norm(T s, T t, T eps_ang, T cs, G g, T& e, T& c) {
  const G gc = hsu_min(hsu_max(g, G(-1)), G(1));
  const G om = G(1) - (gc < G(0) ? -gc : gc);
  T f, df;
  phi_g_om_k<KIND, MODE>(s, t, eps_ang, gc, om, f, df);
  e = f;
  c = df;
  if (HS) {
    T f2, df2;
    phi_g_om_k<KIND, MODE>(s, t, eps_ang, -gc, om, f2, df2);
    e += f2;
    c -= df2;
  }
  c *= cs;
  return om < close_tau<T, G>() || !is_finite(e) || !is_finite(c);
}

// An un-normalized pair from its raw dot product and squared norms q (in G): d2 = q_i + q_j - 2 dot,
//   e = phi(d2) (+ phi(d2 to -x_j)), cj / ci = the coefficients of x_j / x_i in dE/dx_i (times cs).
// Returns whether the pair needs the careful path (close, non-finite, or a |x|^2 that overflowed).
template <int64_t KIND, bool HS, int MODE, typename T, typename G>
HSU_HD bool pair_raw(T s, T t, T cs, G dot, G qi, G qj, T& e, T& cj, T& ci) {
  const G sum = qi + qj;
  const G dm = sum - G(2) * dot;
  T f, df;
  phi_d2_k<KIND, MODE>(s, t, static_cast<T>(dm), f, df);
  e = f;
  cj = T(-2) * cs * df;  // d d2 / dx_i = 2 x_i - 2 x_j
  ci = T(2) * cs * df;
  bool care = !(dm >= close_tau<T, G>() * sum);
  if (HS) {
    const G dp = sum + G(2) * dot;  // distance to -x_j
    T f2, df2;
    phi_d2_k<KIND, MODE>(s, t, static_cast<T>(dp), f2, df2);
    e += f2;
    cj += T(2) * cs * df2;
    ci += T(2) * cs * df2;
    care = care || !(dp >= close_tau<T, G>() * sum);
  }
  return care || !is_finite(e) || !is_finite(cj);
}

// The log-sum kinds' log terms below (gauss_logs, gauss_coef, careful_logs, careful_gauss_coef, diag_term) and
// the engines that reduce them are the Gaussian kind's formula: a second log-sum kind needs its own.
#define HSU_ONLY_GAUSSIAN_LOGSUM_(id, code, name, angle, power, power_scale, logsum) &&(!(logsum) || id == kGaussian)
static_assert(true HSU_KINDS(HSU_ONLY_GAUSSIAN_LOGSUM_),
              "the log-sum code (hsu_pair.h's gauss_logs and after, the kernels' log-sum engines) is the Gaussian "
              "kind's: a new log-sum kind needs its own log terms");
#undef HSU_ONLY_GAUSSIAN_LOGSUM_

// The Gaussian kind as log terms (docs/spec.md §4: reduced as a log-sum-exp): x1 = -t d2 of the pair, x2 = -t d2
// of the pair with -y_j (half-space; otherwise x2 = -inf, a zero weight). v is the cosine (normalized) or
// the raw dot product. Returns whether the pair needs the careful path.
template <bool HS, bool NORM, typename T, typename G>
HSU_HD bool gauss_logs(T t, G v, G qi, G qj, T& x1, T& x2) {
  bool care;
  G dm, dp;
  if (NORM) {
    const G gc = hsu_min(hsu_max(v, G(-1)), G(1));
    const G om = G(1) - (gc < G(0) ? -gc : gc);
    dm = gc >= G(0) ? G(2) * om : G(2) - G(2) * gc;
    dp = gc < G(0) ? G(2) * om : G(2) + G(2) * gc;
    care = om < close_tau<T, G>();
  } else {
    const G sum = qi + qj;
    dm = sum - G(2) * v;
    dp = sum + G(2) * v;
    care = !(dm >= close_tau<T, G>() * sum);
    if (HS) care = care || !(dp >= close_tau<T, G>() * sum);
  }
  x1 = -t * static_cast<T>(hsu_max(dm, G(0)));
  x2 = HS ? -t * static_cast<T>(hsu_max(dp, G(0))) : -static_cast<T>(INFINITY);
  return care;
}

// The Gaussian coefficients of a pair from its weights w1 = exp(x1 - m), w2 = exp(x2 - m) (m: the row's
// shift): normalized, c = d(w1 + w2)/dg (the coefficient of u_j); un-normalized, cj / ci of x_j / x_i.
template <bool NORM, typename T>
HSU_HD void gauss_coef(T t, T w1, T w2, T& cj, T& ci) {
  if (NORM) {
    cj = T(2) * t * (w1 - w2);
    ci = T(0);
  } else {
    cj = T(2) * t * (w1 - w2);
    ci = T(-2) * t * (w1 + w2);
  }
}

// The careful path: one pair from the coordinates of its rows, in double.
//
// Normalized (docs/spec.md §1): with u = w r and a = 1 - |u|^2 = eps_norm r^2 in closed form,
//   2 - 2|g| = a_i + a_j + |u_i - sign(g) u_j|^2,
// a sum of non-negative terms, so om = 1 - |g| keeps its relative accuracy however close the rows are
// (exact duplicates: om = (a_i + a_j) / 2 exactly). The gradient term c u_j of row i is split as
// c sign (u_i + delta), delta = sign u_j - u_i: the small vector c sign delta goes to the row's accumulator,
// the radial coefficient c sign to `rad`, which the epilogue applies in closed form ((I - u u^T) u = a u),
// so no large radial part is ever cancelled. Un-normalized: |x_i -+ x_j|^2 from differences.
struct CarefulGeom {
  double om;    // normalized: 1 - |g|; un-normalized: |x_i - x_j|^2
  double dp;    // un-normalized: |x_i + x_j|^2
  double sign;  // normalized: sign(g)
};

// a * b rounded to double before it is used: never fused with a neighbouring addition. The careful path
// relies on it: w_i r_i - w_j r_j contracted to fma(w_i, r_i, -w_j r_j) leaves the rounding error of
// w_j r_j (~1e-17 |u|) where the exact difference of the two rounded products is 0 (duplicates when
// eps_norm = 0; w and 2w, whose r differ by exactly 2), and ~1e-17 is the whole distance of such a pair.
HSU_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  double p = a * b;
  __asm__("" : "+m"(p));  // the product goes through memory: the compiler cannot fuse it
  return p;
#endif
}

// A row's r split exactly as r = t 2^e (t in [1/2, 1)): with the row scaled by 2^e (exact), u = (w 2^e) t.
struct RowSplit {
  double t, scale;  // scale = 2^e
};

HSU_HD RowSplit split_r(double r) {
  int e;
  const double t = frexp(r, &e);
  return RowSplit{t, ldexp(1.0, e)};
}

// Coordinates of u_j - u_i = t_i (v_j - v_i) + v_j (t_j - t_i) with v = w 2^e, r = t 2^e (split_r):
// differences first and products rounded (mul_rn), so that identical rows give exactly 0, and so do w and
// 2^k w when eps_norm is negligible (their v and t are then identical), however the compiler fuses.
template <bool NORM, typename T>
HSU_HD CarefulGeom careful_geom(const T* wi, const T* wj, int64_t D, double ri, double rj, double ai, double aj) {
  double dm = 0.0, dp = 0.0;
  const RowSplit si = split_r(ri), sj = split_r(rj);
  const double dt = sj.t - si.t;
  for (int64_t d = 0; d < D; ++d) {
    const double xi = NORM ? static_cast<double>(wi[d]) * si.scale : static_cast<double>(wi[d]);
    const double xj = NORM ? static_cast<double>(wj[d]) * sj.scale : static_cast<double>(wj[d]);
    const double m = NORM ? mul_rn(si.t, xj - xi) + mul_rn(xj, dt) : xj - xi;  // u_j - u_i
    const double p = NORM ? mul_rn(si.t, xj + xi) + mul_rn(xj, dt) : xj + xi;  // u_j + u_i
    dm += m * m;
    dp += p * p;
  }
  if (!NORM) return CarefulGeom{dm, dp, 1.0};
  // |u_i - u_j|^2 - |u_i + u_j|^2 = -4 g: the smaller one is |u_i - sign(g) u_j|^2
  const double sign = dm <= dp ? 1.0 : -1.0;
  return CarefulGeom{0.5 * (ai + aj + (dm <= dp ? dm : dp)), 0.0, sign};
}

// The careful path's scale of a normalized pair: q = 2 om = 2 (1 - |g|), its smaller squared distance (to
// u_j or to -u_j); 1 where that is 0 (a pair at distance 0 from u_j or -u_j: nothing to scale by).
HSU_HD double careful_q(double om) {
  return om > 0.0 ? 2.0 * om : 1.0;
}

// phi and q dphi/dg of a normalized pair on the careful path (q = careful_q(1 - |g|)), in double. dphi/dg itself overflows double for pairs whose energy
// and gradient do not (exactly parallel rows of norm 1e55 with s = 3.5: 2 - 2g ~ 1e-114); q dphi/dg is
// formed without it (for Riesz, s phi (q / d2)), and careful_apply divides the small factors by q instead.
template <int64_t KIND>
HSU_HD void phi_g_om_q(double s, double t, double eps_ang, double g, double om, double& f, double& dfq) {
  const double q = careful_q(om);
  if constexpr (KindTraits<KIND>::angle) {
    const double inv_pi = 0.318309886183790671537767526745028724;
    const double gc = hsu_min(hsu_max(g, -1.0), 1.0);
    const double a = hsu_acos_om(gc, om) * inv_pi + eps_ang;
    // q / sin(theta) = 2 om / sqrt(om (2 - om)) = 2 sqrt(om / (2 - om)) (infinite at om = 0, q = 1)
    const double q_sin = om > 0.0 ? 2.0 * sqrt(om / (2.0 - om)) : 1.0 / sqrt(om * (2.0 - om));
    if constexpr (KIND == kAngular) {
      f = pow_neg(a, s);
      dfq = s * inv_pi * (f / a) * q_sin;
    } else if constexpr (KIND == kAngularLog) {
      f = -log(a);
      dfq = inv_pi / a * q_sin;
    } else {
      static_assert(kNoSuchKind<KIND>, "phi_g_om_q: no careful-path formula for this angle kind");
    }
  } else {
    const double d2 = g >= 0.0 ? 2.0 * om : 2.0 - 2.0 * g;
    const double ratio = q / d2;  // 1 for g >= 0 (infinite at distance 0, where q = 1)
    if constexpr (KIND == kRiesz) {
      f = pow_neg(d2, 0.5 * s);
      dfq = s * f * ratio;  // dphi/dg = s d2^(-s/2 - 1)
    } else if constexpr (KIND == kLog) {
      f = -log(d2);
      dfq = 2.0 * ratio;  // dphi/dg = 2 / d2
    } else if constexpr (KIND == kGaussian) {
      f = exp(-t * d2);
      dfq = 2.0 * t * f * q;
    } else {
      static_assert(kNoSuchKind<KIND>, "phi_g_om_q: no careful-path formula for this distance kind");
    }
  }
}

// The pair's coefficients on the careful path: normalized, k1 = cs q dphi/dg (q above; the Gaussian kind's
// log-sum uses q = 1), un-normalized, k1 / k2 with dE/dx_i = k1 (x_i - x_j) + k2 (x_i + x_j).
struct CarefulCoef {
  double k1, k2, q;
};

template <int64_t KIND, bool HS, bool NORM>
HSU_HD CarefulCoef careful_terms(const Params<double>& p, double cs, const CarefulGeom& q, double& e) {
  double f, df;
  if constexpr (NORM) {
    const double g = q.sign * (1.0 - q.om);
    phi_g_om_q<KIND>(p.s, p.t, p.eps_ang, g, q.om, f, df);
    e = f;
    double c = df;
    if (HS) {
      phi_g_om_q<KIND>(p.s, p.t, p.eps_ang, -g, q.om, f, df);
      e += f;
      c -= df;
    }
    return CarefulCoef{cs * c, 0.0, careful_q(q.om)};
  } else {
    phi_d2_k<KIND, kPowGeneral>(p.s, p.t, q.om, f, df);
    e = f;
    const double k1 = 2.0 * cs * df;
    double k2 = 0.0;
    if (HS) {
      phi_d2_k<KIND, kPowGeneral>(p.s, p.t, q.dp, f, df);
      e += f;
      k2 = 2.0 * cs * df;
    }
    return CarefulCoef{k1, k2, 1.0};
  }
}

// Gaussian log terms on the careful path (as gauss_logs).
template <bool HS, bool NORM>
HSU_HD void careful_logs(double t, const CarefulGeom& q, double& x1, double& x2) {
  double dm, dp;
  if (NORM) {
    const double g = q.sign * (1.0 - q.om);
    dm = g >= 0.0 ? 2.0 * q.om : 2.0 - 2.0 * g;
    dp = g < 0.0 ? 2.0 * q.om : 2.0 + 2.0 * g;
  } else {
    dm = q.om;
    dp = q.dp;
  }
  x1 = -t * dm;
  x2 = HS ? -t * dp : -static_cast<double>(INFINITY);
}

// Gaussian coefficients on the careful path from the weights (as gauss_coef).
template <bool NORM>
HSU_HD CarefulCoef careful_gauss_coef(double t, double w1, double w2) {
  if (NORM) return CarefulCoef{2.0 * t * (w1 - w2), 0.0, 1.0};
  return CarefulCoef{-2.0 * t * w1, -2.0 * t * w2, 1.0};  // d exp(-t |x_i -+ x_j|^2)/dx_i = -2t w (x_i -+ x_j)
}

// Adds a careful pair's gradient terms to row i's accumulator (and, when acc_j is not null, row j's).
// Normalized, with c = k1 / q: c sign delta_i (and c sign delta_j = -c delta_i), and the radial terms
// c sign a_i to rad_i (c sign a_j to rad_j), each formed as k1 times a ratio to q (delta / q, a / q), so
// that a c beyond double's range whose products are not does no harm (see phi_g_om_q); rad is the row's
// radial coefficient times a already. Un-normalized: k1 (x_i - x_j) + k2 (x_i + x_j) (and
// k1 (x_j - x_i) + k2 (x_i + x_j)).
template <bool NORM, typename T, typename A>
HSU_HD void careful_apply(const CarefulCoef& k, double sign, const T* wi, const T* wj, int64_t D, double ri,
                          double rj, double ai, double aj, A* acc_i, A* acc_j, double& rad_i, double& rad_j) {
  if (NORM) {
    const double ks = k.k1 * sign;
    const RowSplit si = split_r(ri), sj = split_r(rj);
    const double dt = sj.t - si.t;
    for (int64_t d = 0; d < D; ++d) {
      // delta = sign u_j - u_i, in the form of careful_geom
      const double xi = static_cast<double>(wi[d]) * si.scale, xj = sign * static_cast<double>(wj[d]) * sj.scale;
      const double delta_q = (mul_rn(si.t, xj - xi) + mul_rn(xj, dt)) / k.q;
      acc_i[d] += static_cast<A>(ks * delta_q);
      if (acc_j) acc_j[d] -= static_cast<A>(k.k1 * delta_q);
    }
    rad_i += ks * (ai / k.q);
    rad_j += ks * (aj / k.q);
  } else {
    for (int64_t d = 0; d < D; ++d) {
      const double xi = static_cast<double>(wi[d]), xj = static_cast<double>(wj[d]);
      acc_i[d] += static_cast<A>(k.k1 * (xi - xj) + k.k2 * (xi + xj));
      if (acc_j) acc_j[d] += static_cast<A>(k.k1 * (xj - xi) + k.k2 * (xi + xj));
    }
  }
}

// Run-time dispatch of pair_norm / pair_raw (general exponent path; the CUDA general engine, where the
// products, not phi, bound the time): v is the cosine or the raw dot product. ci is 0 normalized.
// Pair-sum kinds only: a log-sum kind goes through gauss_logs_rt.
template <typename T, typename G>
HSU_HD bool pair_rt(const Params<T>& p, T cs, G v, G qi, G qj, T& e, T& cj, T& ci) {
  ci = T(0);
  return HSU_KIND_SWITCH(p.kind, KIND, [&] {
    if constexpr (KindTraits<KIND>::logsum) {
      return kind_error<bool>(p.kind, "pair_rt: a log-sum kind goes through gauss_logs_rt");
    } else {
      if (p.normalize) {
        if (p.half_space) return pair_norm<KIND, true, kPowGeneral>(p.s, p.t, p.eps_ang, cs, v, e, cj);
        return pair_norm<KIND, false, kPowGeneral>(p.s, p.t, p.eps_ang, cs, v, e, cj);
      }
      if constexpr (KindTraits<KIND>::angle) {
        return kind_error<bool>(p.kind, "angular kinds need normalize=True");
      } else {
        if (p.half_space) return pair_raw<KIND, true, kPowGeneral>(p.s, p.t, cs, v, qi, qj, e, cj, ci);
        return pair_raw<KIND, false, kPowGeneral>(p.s, p.t, cs, v, qi, qj, e, cj, ci);
      }
    }
  });
}

// careful_terms with the kind fixed at compile time and the flags at run time (a kernel compiled per kind),
// pair-sum kinds only: a log-sum kind's careful pairs go through careful_logs.
template <int64_t KIND>
HSU_HD CarefulCoef careful_terms_flags(const Params<double>& p, double cs, const CarefulGeom& q, double& e) {
  if constexpr (KindTraits<KIND>::logsum) {
    return kind_error<CarefulCoef>(p.kind, "careful_terms: a log-sum kind goes through careful_logs");
  } else {
    if (p.normalize) return p.half_space ? careful_terms<KIND, true, true>(p, cs, q, e)
                                         : careful_terms<KIND, false, true>(p, cs, q, e);
    if constexpr (KindTraits<KIND>::angle) {
      return kind_error<CarefulCoef>(p.kind, "angular kinds need normalize=True");
    } else {
      return p.half_space ? careful_terms<KIND, true, false>(p, cs, q, e)
                          : careful_terms<KIND, false, false>(p, cs, q, e);
    }
  }
}

// Run-time dispatch of careful_terms (the careful path of every engine that dispatches on the kind at run time).
HSU_HD CarefulCoef careful_terms_rt(const Params<double>& p, double cs, const CarefulGeom& q, double& e) {
  return HSU_KIND_SWITCH(p.kind, KIND, [&] { return careful_terms_flags<KIND>(p, cs, q, e); });
}

// The run-time parameters of a pass as compile-time ones, for the host engines compiled per kind (the CPU
// kernels): calls f.template operator()<KIND, HS, NORM, MODE>() (a C++20 template lambda
// []<int64_t KIND, bool HS, bool NORM, int MODE>() { ... }) with KIND = p.kind, HS = p.half_space,
// NORM = p.normalize and MODE the exponent mode of power_scale * s (power kinds; kPowGeneral otherwise). An
// unknown kind raises, so does an angle kind without normalize (no un-normalized code exists for it).
template <int64_t KIND, int MODE, typename T, typename F>
inline void dispatch_pass_flags(const Params<T>& p, F& f) {
  if (p.normalize) {
    if (p.half_space) f.template operator()<KIND, true, true, MODE>();
    else f.template operator()<KIND, false, true, MODE>();
  } else if constexpr (KindTraits<KIND>::angle) {
    kind_error(p.kind, "angular kinds need normalize=True");
  } else {
    if (p.half_space) f.template operator()<KIND, true, false, MODE>();
    else f.template operator()<KIND, false, false, MODE>();
  }
}

template <int64_t KIND, typename T, typename F>
inline void dispatch_pass_mode(const Params<T>& p, F& f) {
  if constexpr (KindTraits<KIND>::power) {
    switch (pow_mode(static_cast<T>(KindTraits<KIND>::power_scale) * p.s)) {  // a PowMode: any other is general
      case kPowRsqrt: return dispatch_pass_flags<KIND, kPowRsqrt>(p, f);
      case kPowRecip: return dispatch_pass_flags<KIND, kPowRecip>(p, f);
      case kPowRecip2: return dispatch_pass_flags<KIND, kPowRecip2>(p, f);
      default: return dispatch_pass_flags<KIND, kPowGeneral>(p, f);
    }
  } else {
    dispatch_pass_flags<KIND, kPowGeneral>(p, f);
  }
}

template <typename T, typename F>
inline void dispatch_pass(const Params<T>& p, F&& f) {
  HSU_KIND_SWITCH(p.kind, KIND, [&] { dispatch_pass_mode<KIND>(p, f); });
}

template <typename T, typename G>
HSU_HD bool gauss_logs_rt(const Params<T>& p, G v, G qi, G qj, T& x1, T& x2) {
  if (p.normalize) return p.half_space ? gauss_logs<true, true>(p.t, v, qi, qj, x1, x2)
                                       : gauss_logs<false, true>(p.t, v, qi, qj, x1, x2);
  return p.half_space ? gauss_logs<true, false>(p.t, v, qi, qj, x1, x2) : gauss_logs<false, false>(p.t, v, qi, qj, x1, x2);
}

// ---------------------------------------------------------------------------------------------------------
// Rows.

// Row statistics of the normalized path (docs/spec.md §1) in double, without overflow or underflow of |w|^2:
// r = 1/sqrt(|w|^2 + eps_norm) and a = eps_norm r^2 = 1 - |u|^2, formed after dividing the row by a power
// of two m >= max(max_d |w_d|, sqrt(eps_norm)) (exact), so |w/m|^2 <= D and eps/m^2 <= 4.
template <typename T>
HSU_HD void row_norm(const T* w, int64_t D, double eps, double& r, double& a) {
  double big = 0.0;
  for (int64_t d = 0; d < D; ++d) big = hsu_max(big, static_cast<double>(w[d] < T(0) ? -w[d] : w[d]));
  big = hsu_max(big, sqrt(eps));
  if (big == 0.0) big = 1.0;
  int ex;
  frexp(big, &ex);
  const double inv_m = ldexp(1.0, -ex);
  double q = 0.0;
  for (int64_t d = 0; d < D; ++d) {
    const double v = static_cast<double>(w[d]) * inv_m;
    q += v * v;
  }
  const double eps_s = eps * inv_m * inv_m;
  const double tt = 1.0 / sqrt(q + eps_s);
  r = tt * inv_m;
  a = eps_s * tt * tt;
}

// |x|^2 in double (the un-normalized statistic).
template <typename T>
HSU_HD double row_sq(const T* x, int64_t D) {
  double q = 0.0;
  for (int64_t d = 0; d < D; ++d) q += static_cast<double>(x[d]) * static_cast<double>(x[d]);
  return q;
}

// Half-space self term of row i: the pair (w_i, -w_i), with stat = a_i (normalized) or |w_i|^2. Returns its
// energy (the Gaussian kind: its log term) and k with d(term)/dw_i = k r_i u_i (normalized) or k w_i,
// taken directly with respect to w_i, never through u_i: 1 - g_ii = a_i in closed form (it survives
// |w|^2 >> eps_norm, where g_ii rounds to 1), and eps_norm = 0 gives 0, not infinity times zero.
HSU_HD void diag_term(const Params<double>& p, double stat, double& e, double& k) {
  HSU_KIND_SWITCH(p.kind, KIND, [&] {
    if (p.normalize) {
      const double a = stat;
      // the pair's cosine is -g_ii = -(1 - a); d g_ii / dw_i = 2 a r u_i
      if constexpr (KindTraits<KIND>::logsum) {  // the Gaussian kind's log term (see gauss_logs)
        e = -p.t * (4.0 - 2.0 * a);
        k = -4.0 * p.t * a;
      } else {
        double f, df;
        phi_g_om_k<KIND, kPowGeneral>(p.s, p.t, p.eps_ang, -(1.0 - a), a, f, df);
        e = f;
        k = a == 0.0 ? 0.0 : -2.0 * a * df;
      }
    } else if constexpr (KindTraits<KIND>::angle) {
      kind_error(p.kind, "angular kinds need normalize=True");
    } else if constexpr (KindTraits<KIND>::logsum) {
      e = -4.0 * p.t * stat;
      k = -8.0 * p.t;
    } else {
      double f, df;
      phi_d2_k<KIND, kPowGeneral>(p.s, p.t, 4.0 * stat, f, df);
      e = f;
      k = 8.0 * df;
    }
  });
}

// Scale of a row's pair sums in the total: a self energy counts each unordered pair twice in the per-row
// sums (1/2), the half-space self energy counts {i,j} and {-i,-j} as well as {i,-j} and {-i,j} (1).
// A cross energy (rows of x against rows of y) counts each pair once (1).
template <typename T>
HSU_HD T pair_scale(bool self, bool half_space) {
  return (self && !half_space) ? T(0.5) : T(1);
}

// Scale of a row's accumulator a_i in dE/du_i: every unordered pair of a self energy appears in both
// rows' sums but contributes to each row's gradient once, so the self gradient is 2 * pair_scale * a_i.
template <typename T>
HSU_HD T grad_scale(bool self, bool half_space) {
  return self ? T(2) * pair_scale<T>(self, half_space) : T(1);
}

// The share of an output scale (1/pairs for a mean) applied to every pair coefficient before accumulation,
// so that a mean whose sum (or whose sum's gradient) overflows T still fits; the rest is applied in the
// epilogue, in double. Bounded below so that small coefficients do not sink into subnormals.
HSU_HD double coef_scale(double scale) {
  return hsu_min(1.0, hsu_max(scale, 9.094947017729282e-13));  // 2^-40
}

// The row epilogue (docs/spec.md §6), in double, from row i's accumulator acc (= sum_j c_ij z_j) and its scalar
// rad (normalized: the careful pairs' radial coefficients times a_i, see careful_apply; un-normalized:
// sum_j ci_ij):
//   normalized:    dE/dw_i = r (gs (G - (G.u) u + rad u) + k u),  G = acc, u = w r
//   un-normalized: dE/dw_i = gs (acc + rad w) + k w
// gs scales the pair sums (grad_scale times the epilogue's share of the output scale), k is the row's
// half-space self term. `out` may alias `acc`.
template <typename T, typename A>
HSU_HD void row_grad(bool normalize, const T* w, double r, const A* acc, double rad, double gs, double k, int64_t D,
                     T* out) {
  if (normalize) {
    double gu = 0.0;
    for (int64_t d = 0; d < D; ++d) gu += static_cast<double>(acc[d]) * (static_cast<double>(w[d]) * r);
    const double radial = gs * (rad - gu) + k;
    for (int64_t d = 0; d < D; ++d) {
      const double u = static_cast<double>(w[d]) * r;
      out[d] = static_cast<T>(r * (gs * static_cast<double>(acc[d]) + radial * u));
    }
  } else {
    for (int64_t d = 0; d < D; ++d)
      out[d] = static_cast<T>(gs * static_cast<double>(acc[d]) + (gs * rad + k) * static_cast<double>(w[d]));
  }
}

HSU_ISA_END
}  // namespace hsu
