// Per-pair math of the hyperspherical energies (docs/spec.md §2-§5), shared by every compiled backend.
//
// One definition of phi and phi' for host and device: the CPU kernel includes this header as plain C++,
// the CUDA kernel includes it unchanged and gets __host__ __device__ functions through HSU_HD.
// Nothing here allocates or touches memory: each function maps a few scalars to a few scalars.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define HSU_HD __host__ __device__ __forceinline__
#else
#define HSU_HD inline
#endif

namespace hsu {

// Kind codes: the Python side (hsu_kernels/_params.py) uses the same numbers.
enum Kind : int64_t {
  kRiesz = 0,       // d2^(-s/2)
  kLog = 1,         // -log(d2)
  kAngular = 2,     // (theta/pi + eps_ang)^(-s)
  kAngularLog = 3,  // -log(theta/pi + eps_ang)
  kGaussian = 4,    // exp(-t d2)
};

constexpr int64_t kNumKinds = 5;

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

// Energies that depend on the squared chordal distance d2 only (Riesz, log, Gaussian):
// f(d2) and its derivative df/dd2. d2 is clamped at 0 (rounding can push 2 - 2g a hair below zero).
// MODE is the exponent mode of s/2 (Riesz only).
template <int64_t KIND, int MODE, typename T>
HSU_HD void phi_d2_k(T s, T t, T d2, T& f, T& df) {
  d2 = hsu_max(d2, T(0));
  if (KIND == kRiesz) {
    // f = d2^(-s/2), df = -(s/2) d2^(-s/2-1) = -(s/2) f / d2, from one division: inv = 1/d2.
    const T half = T(0.5) * s;
    const T inv = T(1) / d2;
    if (MODE == kPowRsqrt) f = hsu_sqrt(inv);
    else if (MODE == kPowRecip) f = inv;
    else if (MODE == kPowRecip2) f = inv * inv;
    else f = pow_neg(d2, half);
    df = -half * f * inv;
  } else if (KIND == kLog) {
    f = -hsu_log(d2);
    df = T(-1) / d2;
  } else {  // kGaussian
    f = hsu_exp(-t * d2);
    df = -t * f;
  }
}

// Every kind as a function of the cosine g of two normalized rows: phi(g) and dphi/dg (docs/spec.md §3), given
// also om = 1 - |g| (formed by the caller as accurately as it can: in a wider type, or in closed form for
// the half-space self pair). MODE is the exponent mode of s/2 (Riesz) or s (angular). G is the type g
// arrives in: a float kernel may carry g in double so that d2 = 2 - 2g, which cancels for nearly parallel
// rows, is formed before rounding.
template <int64_t KIND, int MODE, typename T, typename G>
HSU_HD void phi_g_om_k(T s, T t, T eps_ang, G g, G om_g, T& f, T& df) {
  if (KIND == kAngular || KIND == kAngularLog) {
    const T inv_pi = T(0.318309886183790671537767526745028724);
    // |g| < 1 strictly in exact arithmetic (eps_norm sits inside the norm); the clamps only guard
    // rounding and the eps_norm = 0 case, where the derivative would otherwise be infinite times zero.
    const T gc = hsu_min(hsu_max(static_cast<T>(g), T(-1)), T(1));
    const T om = hsu_max(static_cast<T>(om_g), T(0));
    const T a = hsu_acos_om(gc, om) * inv_pi + eps_ang;
    const T sin_t = hsu_sqrt(om * (T(2) - om));  // sqrt(1 - g^2) = sqrt((1-|g|)(1+|g|))
    // d(theta/pi)/dg = -1/(pi sin(theta)); written as a quotient so sin = 0 gives inf, not NaN.
    const T dtheta = -inv_pi / sin_t;
    if (KIND == kAngular) {
      f = pow_neg_fixed<MODE>(a, s);
      df = -s * f / a * dtheta;  // s/pi (theta/pi + eps)^(-s-1) / sin(theta)
    } else {
      f = -hsu_log(a);
      df = -dtheta / a;  // 1/pi / (theta/pi + eps) / sin(theta)
    }
  } else {
    T fd, dfd;
    phi_d2_k<KIND, MODE>(s, t, static_cast<T>(G(2) - G(2) * g), fd, dfd);
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

// Run-time dispatch of phi_g_k / phi_d2_k on the kind (general exponent path).
template <typename T>
HSU_HD void phi_d2(const Params<T>& p, T d2, T& f, T& df) {
  if (p.kind == kRiesz) phi_d2_k<kRiesz, kPowGeneral>(p.s, p.t, d2, f, df);
  else if (p.kind == kLog) phi_d2_k<kLog, kPowGeneral>(p.s, p.t, d2, f, df);
  else phi_d2_k<kGaussian, kPowGeneral>(p.s, p.t, d2, f, df);
}

template <typename T>
HSU_HD void phi_g_om(const Params<T>& p, T g, T om, T& f, T& df) {
  switch (p.kind) {
    case kRiesz: phi_g_om_k<kRiesz, kPowGeneral>(p.s, p.t, p.eps_ang, g, om, f, df); break;
    case kLog: phi_g_om_k<kLog, kPowGeneral>(p.s, p.t, p.eps_ang, g, om, f, df); break;
    case kAngular: phi_g_om_k<kAngular, kPowGeneral>(p.s, p.t, p.eps_ang, g, om, f, df); break;
    case kAngularLog: phi_g_om_k<kAngularLog, kPowGeneral>(p.s, p.t, p.eps_ang, g, om, f, df); break;
    default: phi_g_om_k<kGaussian, kPowGeneral>(p.s, p.t, p.eps_ang, g, om, f, df); break;
  }
}

template <typename T>
HSU_HD void phi_g(const Params<T>& p, T g, T& f, T& df) {
  const T gcl = hsu_min(hsu_max(g, T(-1)), T(1));
  phi_g_om(p, gcl, T(1) - (gcl < T(0) ? -gcl : gcl), f, df);
}

// One pair with everything fixed at compile time (see pair_terms below for the meaning). G is the type
// of the dot product and row statistics (see phi_g_k); the energy terms are computed in T.
template <int64_t KIND, bool HS, bool NORM, int MODE, typename T, typename G>
HSU_HD void pair_terms_k(T s, T t, T eps_ang, G dot, G stat_i, G stat_j, T& e, T& cj, T& ci) {
  if (NORM) {
    const G g = dot * stat_i * stat_j;
    T f, df;
    phi_g_k<KIND, MODE>(s, t, eps_ang, g, f, df);
    e = f;
    T c = df;
    if (HS) {
      T f2, df2;
      phi_g_k<KIND, MODE>(s, t, eps_ang, -g, f2, df2);
      e += f2;
      c -= df2;
    }
    cj = c * static_cast<T>(stat_j);  // a_i accumulates dE/du_i = sum_j c u_j with u_j = r_j w_j
    ci = T(0);
  } else {
    T f, df;
    phi_d2_k<KIND, MODE>(s, t, static_cast<T>(stat_i + stat_j - G(2) * dot), f, df);
    e = f;
    // d d2-/dw_i = 2 w_i - 2 w_j
    cj = T(-2) * df;
    ci = T(2) * df;
    if (HS) {
      T f2, df2;
      phi_d2_k<KIND, MODE>(s, t, static_cast<T>(stat_i + stat_j + G(2) * dot), f2, df2);  // distance to -w_j
      e += f2;
      cj += T(2) * df2;
      ci += T(2) * df2;
    }
  }
}

// One pair (i, j), i != j, seen from row i. Inputs: the raw dot product w_i . w_j and per-row statistics
// (normalize: r = 1/sqrt(|w|^2 + eps_norm); otherwise q = |w|^2). Outputs:
//   e  : the pair's energy term psi (phi(g), plus phi(-g) in half-space mode),
//   cj : the coefficient of w_j in row i's gradient accumulator a_i = sum_j cj w_j,
//   ci : (un-normalized only) the coefficient of w_i, summed into b_i = sum_j ci.
// The row epilogue (row_grad below) turns (a_i, b_i) into dE/dw_i.
template <typename T>
HSU_HD void pair_terms(const Params<T>& p, T dot, T stat_i, T stat_j, T& e, T& cj, T& ci) {
#define HSU_PAIR_CASE(K)                                                                         \
  if (p.kind == K) {                                                                             \
    if (p.normalize) {                                                                           \
      if (p.half_space) pair_terms_k<K, true, true, kPowGeneral>(p.s, p.t, p.eps_ang, dot, stat_i, stat_j, e, cj, ci); \
      else pair_terms_k<K, false, true, kPowGeneral>(p.s, p.t, p.eps_ang, dot, stat_i, stat_j, e, cj, ci);             \
    } else {                                                                                     \
      if (p.half_space) pair_terms_k<K, true, false, kPowGeneral>(p.s, p.t, p.eps_ang, dot, stat_i, stat_j, e, cj, ci); \
      else pair_terms_k<K, false, false, kPowGeneral>(p.s, p.t, p.eps_ang, dot, stat_i, stat_j, e, cj, ci);            \
    }                                                                                            \
    return;                                                                                      \
  }
  HSU_PAIR_CASE(kRiesz)
  HSU_PAIR_CASE(kLog)
  HSU_PAIR_CASE(kAngular)
  HSU_PAIR_CASE(kAngularLog)
  HSU_PAIR_CASE(kGaussian)
#undef HSU_PAIR_CASE
}

// Per-row statistic used by pair_terms.
template <typename T>
HSU_HD T row_stat(const Params<T>& p, T sq_norm, T eps_norm) {
  return p.normalize ? T(1) / hsu_sqrt(sq_norm + eps_norm) : sq_norm;
}

// Half-space self term of row i: the pair (w_i, -w_i). Returns its energy and the scalar k with
// dE/dw_i += k * w_i (taken directly with respect to w_i, never through u_i, so eps_norm = 0 gives 0,
// not infinity times zero).
template <typename T>
HSU_HD void diag_term(const Params<T>& p, T sq_norm, T eps_norm, T& e, T& k) {
  if (p.normalize) {
    T n2 = sq_norm + eps_norm;
    T gii = sq_norm / n2;
    T f, df;
    // 1 - g_ii = eps_norm / n2 exactly: in closed form it survives |w|^2 >> eps_norm, where g_ii rounds to 1.
    phi_g_om(p, -gii, eps_norm / n2, f, df);
    e = f;
    // d g_ii / d w_i = 2 eps w_i / n^4
    k = (eps_norm == T(0)) ? T(0) : -df * T(2) * eps_norm / (n2 * n2);
  } else {
    T f, df;
    phi_d2(p, T(4) * sq_norm, f, df);
    e = f;
    k = T(8) * df;
  }
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

}  // namespace hsu

namespace hsu {

// The row epilogue (docs/spec.md §6): from row i's accumulators a_i = sum_j cj w_j and b_i = sum_j ci to dE/dw_i.
//   normalized:   G = scale * a_i;  dE/dw_i = r_i G - r_i^3 (G . w_i) w_i   (+ k_diag w_i)
//   un-normalized: dE/dw_i = scale * (a_i + b_i w_i)                        (+ k_diag w_i)
// The two normalized terms cancel when a row's gradient is nearly radial, so the epilogue runs in the
// wider type A (double for float inputs on the CPU; it is O(N D) work). `out` may alias `a`.
template <typename T, typename A = T>
HSU_HD void row_grad(const Params<T>& p, const T* w, A stat, const T* a, A b, A scale, A k_diag, int64_t D,
                     T* out) {
  if (p.normalize) {
    A gw = A(0);
    for (int64_t d = 0; d < D; ++d) gw += static_cast<A>(a[d]) * static_cast<A>(w[d]);
    const A r = stat;
    const A radial = r * r * r * scale * gw;
    for (int64_t d = 0; d < D; ++d)
      out[d] = static_cast<T>(r * scale * static_cast<A>(a[d]) - (radial - k_diag) * static_cast<A>(w[d]));
  } else {
    for (int64_t d = 0; d < D; ++d)
      out[d] = static_cast<T>(scale * (static_cast<A>(a[d]) + b * static_cast<A>(w[d])) + k_diag * static_cast<A>(w[d]));
  }
}

}  // namespace hsu
