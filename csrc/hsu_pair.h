// Per-pair math of the hyperspherical energies (SPEC.md §2-§5), shared by every compiled backend.
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
HSU_HD float hsu_log(float x) { return logf(x); }
HSU_HD double hsu_log(double x) { return log(x); }
HSU_HD float hsu_exp(float x) { return expf(x); }
HSU_HD double hsu_exp(double x) { return exp(x); }
HSU_HD float hsu_acos(float x) { return acosf(x); }
HSU_HD double hsu_acos(double x) { return acos(x); }

template <typename T>
HSU_HD T hsu_max(T a, T b) { return a > b ? a : b; }
template <typename T>
HSU_HD T hsu_min(T a, T b) { return a < b ? a : b; }

// x^(-p) for x >= 0, with the common exponents computed without exp/log (exact and faster).
template <typename T>
HSU_HD T pow_neg(T x, T p) {
  if (p == T(1)) return T(1) / x;
  if (p == T(0.5)) return T(1) / hsu_sqrt(x);
  if (p == T(2)) return T(1) / (x * x);
  if (p == T(1.5)) return T(1) / (x * hsu_sqrt(x));
  if (p == T(0.25)) return T(1) / hsu_sqrt(hsu_sqrt(x));
  if (p == T(3)) return T(1) / (x * x * x);
  if (x == T(0)) return T(INFINITY);
  return hsu_exp(-p * hsu_log(x));
}

// Energies that depend on the squared chordal distance d2 only (Riesz, log, Gaussian):
// f(d2) and its derivative df/dd2. d2 is clamped at 0 (rounding can push 2 - 2g a hair below zero).
template <typename T>
HSU_HD void phi_d2(const Params<T>& p, T d2, T& f, T& df) {
  d2 = hsu_max(d2, T(0));
  if (p.kind == kRiesz) {
    // f = d2^(-s/2), df = -(s/2) d2^(-s/2-1) = -(s/2) f / d2
    T half = T(0.5) * p.s;
    f = pow_neg(d2, half);
    df = -half * f / d2;
  } else if (p.kind == kLog) {
    f = -hsu_log(d2);
    df = T(-1) / d2;
  } else {  // kGaussian
    f = hsu_exp(-p.t * d2);
    df = -p.t * f;
  }
}

// Every kind as a function of the cosine g of two normalized rows: phi(g) and dphi/dg (SPEC §3).
template <typename T>
HSU_HD void phi_g(const Params<T>& p, T g, T& f, T& df) {
  if (p.kind == kAngular || p.kind == kAngularLog) {
    const T inv_pi = T(0.318309886183790671537767526745028724);
    // |g| < 1 strictly in exact arithmetic (eps_norm sits inside the norm); the clamp only guards
    // rounding and the eps_norm = 0 case, where the derivative would otherwise be infinite times zero.
    T gc = hsu_min(hsu_max(g, T(-1)), T(1));
    T a = hsu_acos(gc) * inv_pi + p.eps_ang;
    T sin_t = hsu_sqrt(hsu_max(T(1) - gc * gc, T(0)));
    // d(theta/pi)/dg = -1/(pi sin(theta)); written as a product so sin = 0 gives inf, not NaN.
    T dtheta = -inv_pi / sin_t;
    if (p.kind == kAngular) {
      f = pow_neg(a, p.s);
      df = -p.s * f / a * dtheta;  // s/pi (theta/pi + eps)^(-s-1) / sin(theta)
    } else {
      f = -hsu_log(a);
      df = -dtheta / a;  // 1/pi / (theta/pi + eps) / sin(theta)
    }
  } else {
    T fd, dfd;
    phi_d2(p, T(2) - T(2) * g, fd, dfd);
    f = fd;
    df = T(-2) * dfd;
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
  if (p.normalize) {
    T g = dot * stat_i * stat_j;
    T f, df;
    phi_g(p, g, f, df);
    e = f;
    T c = df;
    if (p.half_space) {
      T f2, df2;
      phi_g(p, -g, f2, df2);
      e += f2;
      c -= df2;
    }
    cj = c * stat_j;  // a_i accumulates dE/du_i = sum_j c u_j with u_j = r_j w_j
    ci = T(0);
  } else {
    T f, df;
    phi_d2(p, stat_i + stat_j - T(2) * dot, f, df);
    e = f;
    // d d2-/dw_i = 2 w_i - 2 w_j
    cj = T(-2) * df;
    ci = T(2) * df;
    if (p.half_space) {
      T f2, df2;
      phi_d2(p, stat_i + stat_j + T(2) * dot, f2, df2);  // distance to -w_j
      e += f2;
      cj += T(2) * df2;
      ci += T(2) * df2;
    }
  }
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
    phi_g(p, -gii, f, df);
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

// The row epilogue (SPEC §6): from row i's accumulators a_i = sum_j cj w_j and b_i = sum_j ci to dE/dw_i.
//   normalized:   G = scale * a_i;  dE/dw_i = r_i G - r_i^3 (G . w_i) w_i   (+ k_diag w_i)
//   un-normalized: dE/dw_i = scale * (a_i + b_i w_i)                        (+ k_diag w_i)
// `out` may alias `a`.
template <typename T>
HSU_HD void row_grad(const Params<T>& p, const T* w, T stat, const T* a, T b, T scale, T k_diag, int64_t D,
                     T* out) {
  if (p.normalize) {
    T gw = T(0);
    for (int64_t d = 0; d < D; ++d) gw += a[d] * w[d];
    T r = stat;
    T radial = r * r * r * scale * gw;
    for (int64_t d = 0; d < D; ++d) out[d] = r * scale * a[d] - radial * w[d] + k_diag * w[d];
  } else {
    for (int64_t d = 0; d < D; ++d) out[d] = scale * (a[d] + b * w[d]) + k_diag * w[d];
  }
}

}  // namespace hsu
