// Host test of the per-pair header csrc/hsu_pair.h (no torch): run by ctest (CMakeLists.txt).
//
//  1. phi and phi' of every kind against the closed forms of docs/spec.md §3 and against central finite
//     differences, in double, through the run-time dispatch (phi_g, phi_d2) and every exponent mode;
//  2. the host float exp/log/acos against double libm;
//  3. the half-space self term (diag_term) and its gradient coefficient against finite differences;
//  4. the kernels' per-pair path (pair_rt / gauss_logs_rt, the careful path for flagged pairs) + row_grad +
//     pair_scale/grad_scale: the energy (the Gaussian kind: its log-sum) and gradient of small self and
//     cross energies, against an independent naive energy (half-space by concatenating [W, -W]) and its
//     finite-difference gradient, with rows drawn well apart and with duplicates and antipodes;
//  5. the careful path on close pairs: exact duplicates give 1 - |g| = (a_i + a_j)/2 exactly.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../hsu_pair.h"

namespace {

int g_failures = 0;
int g_checks = 0;

void expect_close(double got, double want, double rtol, double atol, const std::string& what) {
  ++g_checks;
  const double err = std::fabs(got - want);
  const bool ok = std::isfinite(got) == std::isfinite(want) && (err <= atol + rtol * std::fabs(want) || got == want);
  if (!ok) {
    ++g_failures;
    if (g_failures <= 40)
      std::printf("FAIL %s: got %.17g want %.17g (abs err %.3g)\n", what.c_str(), got, want, err);
  }
}

const double kPi = 3.14159265358979323846;
const double kEpsAng = 1e-4;
const double kT = 2.0;

using hsu::kind_name;

// The closed forms below are written per kind, independently of the header: a kind without one stops the test.
[[noreturn]] void no_closed_form(int64_t kind) {
  std::printf("FAIL: no closed form for kind %lld in test_pair_header.cpp\n", static_cast<long long>(kind));
  std::exit(1);
}

// docs/spec.md §3, written from the table.
double phi_closed(int64_t kind, double s, double g) {
  const double d2 = 2.0 - 2.0 * g;
  const double a = std::acos(g) / kPi + kEpsAng;
  switch (kind) {
    case hsu::kRiesz: return std::pow(d2, -s / 2.0);
    case hsu::kLog: return -std::log(d2);
    case hsu::kAngular: return std::pow(a, -s);
    case hsu::kAngularLog: return -std::log(a);
    case hsu::kGaussian: return std::exp(-kT * d2);
    default: no_closed_form(kind);
  }
}

double dphi_closed(int64_t kind, double s, double g) {
  const double d2 = 2.0 - 2.0 * g;
  const double a = std::acos(g) / kPi + kEpsAng;
  const double sn = std::sqrt(1.0 - g * g);
  switch (kind) {
    case hsu::kRiesz: return s * std::pow(d2, -s / 2.0 - 1.0);
    case hsu::kLog: return 2.0 / d2;
    case hsu::kAngular: return s / kPi * std::pow(a, -s - 1.0) / sn;
    case hsu::kAngularLog: return 1.0 / kPi / a / sn;
    case hsu::kGaussian: return 2.0 * kT * std::exp(-kT * d2);
    default: no_closed_form(kind);
  }
}

hsu::Params<double> params(int64_t kind, double s, bool hs, bool norm) {
  return hsu::Params<double>{kind, s, kT, kEpsAng, hs, norm};
}

// The exponent mode whose fixed path a kind and s take (the CPU and CUDA kernels pick it the same way).
int mode_of(int64_t kind, double s) {
  if (kind == hsu::kRiesz) return hsu::pow_mode(0.5 * s);
  if (kind == hsu::kAngular) return hsu::pow_mode(s);
  return hsu::kPowGeneral;
}

template <int MODE>
void phi_mode(int64_t kind, double s, double g, double& f, double& df) {
  HSU_KIND_SWITCH(kind, KIND, [&] { hsu::phi_g_k<KIND, MODE>(s, kT, kEpsAng, g, f, df); });
}

void test_phi() {
  const double svals[] = {0.5, 1.0, 2.0, 3.5, 4.0};
  for (int64_t kind = 0; kind < hsu::kNumKinds; ++kind) {
    for (double s : svals) {
      const auto p = params(kind, s, false, true);
      for (double g = -0.95; g <= 0.95; g += 0.0625) {
        const std::string tag = std::string(kind_name(kind)) + " s=" + std::to_string(s) + " g=" + std::to_string(g);
        double f, df;
        hsu::phi_g(p, g, f, df);
        expect_close(f, phi_closed(kind, s, g), 1e-13, 0.0, "phi " + tag);
        expect_close(df, dphi_closed(kind, s, g), 1e-12, 0.0, "phi' closed " + tag);
        const double h = 1e-6;
        double fp, fm, dd;
        hsu::phi_g(p, g + h, fp, dd);
        hsu::phi_g(p, g - h, fm, dd);
        expect_close(df, (fp - fm) / (2 * h), 1e-6, 1e-9, "phi' vs central difference " + tag);
        // the fixed exponent path the kernels take for this s
        double f2, df2;
        switch (mode_of(kind, s)) {
          case hsu::kPowRsqrt: phi_mode<hsu::kPowRsqrt>(kind, s, g, f2, df2); break;
          case hsu::kPowRecip: phi_mode<hsu::kPowRecip>(kind, s, g, f2, df2); break;
          case hsu::kPowRecip2: phi_mode<hsu::kPowRecip2>(kind, s, g, f2, df2); break;
          default: phi_mode<hsu::kPowGeneral>(kind, s, g, f2, df2); break;
        }
        expect_close(f2, f, 1e-13, 0.0, "phi fixed mode " + tag);
        expect_close(df2, df, 1e-13, 0.0, "phi' fixed mode " + tag);
      }
      // un-normalized kinds as functions of d2: f(d2), df/dd2
      if (hsu::kind_info(kind).angle) continue;
      for (double d2 = 0.05; d2 < 6.0; d2 += 0.37) {
        const std::string tag = std::string(kind_name(kind)) + " s=" + std::to_string(s) + " d2=" + std::to_string(d2);
        double f, df;
        hsu::phi_d2(p, d2, f, df);
        const double g = 1.0 - d2 / 2.0;  // phi as a function of d2 is the table's phi at g = 1 - d2/2
        expect_close(f, phi_closed(kind, s, g), 1e-13, 0.0, "phi_d2 " + tag);
        expect_close(df, -0.5 * dphi_closed(kind, s, g), 1e-12, 0.0, "phi_d2' " + tag);
      }
    }
  }
  // d2 is clamped at 0: a hair below zero gives the value at 0, never NaN
  double f, df;
  hsu::phi_d2(params(hsu::kGaussian, 1.0, false, false), -1e-17, f, df);
  expect_close(f, 1.0, 0.0, 0.0, "gaussian at d2 = -1e-17 (clamped)");
}

void test_float_math() {
  // exp: relative error against double libm over the finite range
  double worst = 0.0;
  for (double x = -87.0; x <= 88.0; x += 0.0137) {
    const float xf = static_cast<float>(x);
    const double want = std::exp(static_cast<double>(xf));
    worst = std::fmax(worst, std::fabs(hsu::hsu_exp(xf) - want) / want);
  }
  expect_close(worst, 0.0, 0.0, 1e-6, "float exp: worst relative error");
  expect_close(hsu::hsu_exp(-100.0f), 0.0, 0.0, 0.0, "float exp(-100) underflows to 0");
  expect_close(hsu::hsu_exp(100.0f), INFINITY, 0.0, 0.0, "float exp(100) is inf");
  // log: absolute error (relative near 1 is meaningless), over normal and subnormal inputs
  worst = 0.0;
  for (double e = -44.0; e <= 38.0; e += 0.0113) {
    const float xf = static_cast<float>(std::pow(10.0, e));
    if (!(xf > 0.0f)) continue;
    const double want = std::log(static_cast<double>(xf));
    worst = std::fmax(worst, std::fabs(hsu::hsu_log(xf) - want) / std::fmax(1.0, std::fabs(want)));
  }
  expect_close(worst, 0.0, 0.0, 1e-6, "float log: worst error (relative above 1, absolute below)");
  expect_close(hsu::hsu_log(0.0f), -INFINITY, 0.0, 0.0, "float log(0) is -inf");
  // acos: absolute error over [-1, 1], and the end points
  worst = 0.0;
  for (int k = -100000; k <= 100000; ++k) {
    const float xf = static_cast<float>(k / 100000.0);
    worst = std::fmax(worst, std::fabs(hsu::hsu_acos(xf) - std::acos(static_cast<double>(xf))));
  }
  expect_close(worst, 0.0, 0.0, 1e-6, "float acos: worst absolute error");
  expect_close(hsu::hsu_acos(1.0f), 0.0, 0.0, 1e-7, "float acos(1)");
  expect_close(hsu::hsu_acos(-1.0f), kPi, 0.0, 1e-6, "float acos(-1)");
}

// phi from 1 - g and 1 + g (docs/spec.md §3 written with d2 = 2 (1 - g) and theta = 2 atan2(sqrt(1 - g), sqrt(1 + g)),
// which keep their digits near g = +-1, where 2 - 2g and acos(g) do not).
double phi_stable(int64_t kind, double s, double omg, double opg) {
  const double d2 = 2.0 * omg;
  const double a = 2.0 * std::atan2(std::sqrt(omg), std::sqrt(opg)) / kPi + kEpsAng;
  switch (kind) {
    case hsu::kRiesz: return std::pow(d2, -s / 2.0);
    case hsu::kLog: return -std::log(d2);
    case hsu::kAngular: return std::pow(a, -s);
    case hsu::kAngularLog: return -std::log(a);
    case hsu::kGaussian: return std::exp(-kT * d2);
    default: no_closed_form(kind);
  }
}

// Naive energy of a point set: every unordered pair, closed forms, no header function involved. The
// cosine's 1 -+ g come from coordinate differences: 2 - 2g = a_x + a_y + |u_x - u_y|^2 with
// a = eps / (|x|^2 + eps) (normalized), d2 = |x - y|^2 (not), so that the finite differences of close rows
// are not buried in the rounding of a dot product.
double naive_pair(int64_t kind, double s, bool norm, const double* x, const double* y, int64_t D, double eps) {
  double xx = 0, yy = 0, diff = 0, sum = 0;
  for (int64_t d = 0; d < D; ++d) {
    xx += x[d] * x[d];
    yy += y[d] * y[d];
  }
  const double nx = std::sqrt(xx + eps), ny = std::sqrt(yy + eps);
  for (int64_t d = 0; d < D; ++d) {
    const double ux = norm ? x[d] / nx : x[d], uy = norm ? y[d] / ny : y[d];
    diff += (ux - uy) * (ux - uy);
    sum += (ux + uy) * (ux + uy);
  }
  if (!norm) return phi_stable(kind, s, diff / 2.0, 2.0 - diff / 2.0);  // phi as a function of d2 = |x - y|^2
  const double a = eps / (xx + eps) + eps / (yy + eps);
  return phi_stable(kind, s, (a + diff) / 2.0, (a + sum) / 2.0);
}

double naive_self(int64_t kind, double s, bool hs, bool norm, const std::vector<double>& w, int64_t n, int64_t D,
                  double eps) {
  std::vector<double> pts(w);
  if (hs)
    for (double v : w) pts.push_back(-v);
  const int64_t m = hs ? 2 * n : n;
  double e = 0.0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = i + 1; j < m; ++j) e += naive_pair(kind, s, norm, &pts[i * D], &pts[j * D], D, eps);
  return e;
}

double naive_cross(int64_t kind, double s, bool hs, bool norm, const std::vector<double>& x,
                   const std::vector<double>& y, int64_t nx, int64_t ny, int64_t D, double eps) {
  double e = 0.0;
  std::vector<double> yn(D);
  for (int64_t i = 0; i < nx; ++i)
    for (int64_t j = 0; j < ny; ++j) {
      e += naive_pair(kind, s, norm, &x[i * D], &y[j * D], D, eps);
      if (hs) {
        for (int64_t d = 0; d < D; ++d) yn[d] = -y[j * D + d];
        e += naive_pair(kind, s, norm, &x[i * D], yn.data(), D, eps);
      }
    }
  return e;
}

// d f / d v by the fourth-order central difference (step h, 1e-3 by default): truncation error ~1e-12 f^(5),
// far below the roundoff of the two-point formula at the step where its truncation error would be as
// small. Rows 1e-3 apart need a step well below that: 1e-6 (truncation ~(h / 1e-3)^4, roundoff ~1e-10).
double central_diff(const std::function<double()>& f, double& v, double h = 1e-3) {
  const double keep = v;
  auto at = [&](double x) {
    v = x;
    return f();
  };
  const double d = (8.0 * (at(keep + h) - at(keep - h)) - (at(keep + 2 * h) - at(keep - 2 * h))) / (12.0 * h);
  v = keep;
  return d;
}

// Energy and dE/dx of rows x against rows y through the header, as the kernels compute them: the fast
// path (on raw dot products of u rows) for every pair it does not flag, the careful path for the others,
// the online log-sum-exp for the Gaussian kind (whose value is then the log-sum), and row_grad.
double header_rows(const hsu::Params<double>& p, const std::vector<double>& x, const std::vector<double>& y,
                   int64_t nx, int64_t ny, int64_t D, double eps, bool self, std::vector<double>& grad,
                   int* careful = nullptr) {
  const bool lse = p.kind == hsu::kGaussian;
  auto stats = [&](const std::vector<double>& v, int64_t n, std::vector<double>& r, std::vector<double>& a,
                   std::vector<double>& z) {
    r.resize(n);
    a.resize(n);
    z.resize(n * D);
    for (int64_t i = 0; i < n; ++i) {
      if (p.normalize) hsu::row_norm(&v[i * D], D, eps, r[i], a[i]);
      else r[i] = hsu::row_sq(&v[i * D], D), a[i] = 0.0;
      for (int64_t d = 0; d < D; ++d) z[i * D + d] = p.normalize ? v[i * D + d] * r[i] : v[i * D + d];
    }
  };
  std::vector<double> rx, ax, zx, ry, ay, zy;
  stats(x, nx, rx, ax, zx);
  stats(y, ny, ry, ay, zy);
  grad.assign(nx * D, 0.0);
  std::vector<double> acc(nx * D, 0.0), rad(nx, 0.0), esum(nx, 0.0), shift(nx, -INFINITY), ed(nx, 0.0), kd(nx, 0.0);
  for (int64_t i = 0; i < nx; ++i) {
    for (int64_t j = 0; j < ny; ++j) {
      if (self && j == i) continue;
      double dot = 0.0;
      for (int64_t d = 0; d < D; ++d) dot += zx[i * D + d] * zy[j * D + d];
      const double qi = p.normalize ? 0.0 : rx[i], qj = p.normalize ? 0.0 : ry[j];
      const double* xi = &x[i * D];
      const double* yj = &y[j * D];
      const double ri = p.normalize ? rx[i] : 1.0, rj = p.normalize ? ry[j] : 1.0;
      double e, cj, ci, unused = 0.0;
      if (lse) {
        double x1, x2;
        hsu::CarefulGeom q{0.0, 0.0, 1.0};
        const bool care = hsu::gauss_logs_rt(p, dot, qi, qj, x1, x2);
        if (care) {
          q = hsu::careful_geom<true>(xi, yj, D, ri, rj, ax[i], ay[j]);
          if (!p.normalize) q = hsu::careful_geom<false>(xi, yj, D, 1.0, 1.0, 0.0, 0.0);
          if (careful) ++*careful;
          if (p.normalize) p.half_space ? hsu::careful_logs<true, true>(p.t, q, x1, x2) : hsu::careful_logs<false, true>(p.t, q, x1, x2);
          else p.half_space ? hsu::careful_logs<true, false>(p.t, q, x1, x2) : hsu::careful_logs<false, false>(p.t, q, x1, x2);
        }
        const double top = std::fmax(x1, x2);
        if (top > shift[i]) {
          const double f = shift[i] > -INFINITY ? std::exp(shift[i] - top) : 0.0;
          esum[i] *= f;
          rad[i] *= f;
          for (int64_t d = 0; d < D; ++d) acc[i * D + d] *= f;
          shift[i] = top;
        }
        const double w1 = std::exp(x1 - shift[i]), w2 = std::exp(x2 - shift[i]);
        esum[i] += w1 + w2;
        if (care) {
          if (p.normalize)
            hsu::careful_apply<true>(hsu::careful_gauss_coef<true>(p.t, w1, w2), q.sign, xi, yj, D, ri, rj, ax[i],
                                     ay[j], &acc[i * D], (double*)nullptr, rad[i], unused);
          else
            hsu::careful_apply<false>(hsu::careful_gauss_coef<false>(p.t, w1, w2), 1.0, xi, yj, D, 1.0, 1.0, 0.0,
                                      0.0, &acc[i * D], (double*)nullptr, unused, unused);
          continue;
        }
        p.normalize ? hsu::gauss_coef<true>(p.t, w1, w2, cj, ci) : hsu::gauss_coef<false>(p.t, w1, w2, cj, ci);
      } else if (hsu::pair_rt(p, 1.0, dot, qi, qj, e, cj, ci)) {
        const hsu::CarefulGeom q = p.normalize ? hsu::careful_geom<true>(xi, yj, D, ri, rj, ax[i], ay[j])
                                               : hsu::careful_geom<false>(xi, yj, D, 1.0, 1.0, 0.0, 0.0);
        if (careful) ++*careful;
        const hsu::CarefulCoef k = hsu::careful_terms_rt(p, 1.0, q, e);
        esum[i] += e;
        if (p.normalize)
          hsu::careful_apply<true>(k, q.sign, xi, yj, D, ri, rj, ax[i], ay[j], &acc[i * D], (double*)nullptr, rad[i],
                                   unused);
        else
          hsu::careful_apply<false>(k, 1.0, xi, yj, D, 1.0, 1.0, 0.0, 0.0, &acc[i * D], (double*)nullptr, unused,
                                    unused);
        continue;
      } else {
        esum[i] += e;
      }
      rad[i] += ci;
      for (int64_t d = 0; d < D; ++d) acc[i * D + d] += cj * zy[j * D + d];
    }
    if (self && p.half_space) hsu::diag_term(p, p.normalize ? ax[i] : rx[i], ed[i], kd[i]);
  }
  const double ps = hsu::pair_scale<double>(self, p.half_space), gs = hsu::grad_scale<double>(self, p.half_space);
  double value = 0.0, lz = 0.0;
  if (lse) {
    double top = -INFINITY;
    for (int64_t i = 0; i < nx; ++i) top = std::fmax(top, std::fmax(shift[i], self && p.half_space ? ed[i] : -INFINITY));
    double z = 0.0;
    for (int64_t i = 0; i < nx; ++i)
      z += ps * esum[i] * std::exp(shift[i] - top) + (self && p.half_space ? std::exp(ed[i] - top) : 0.0);
    value = lz = top + std::log(z);
  } else {
    for (int64_t i = 0; i < nx; ++i) value += ps * esum[i] + ed[i];
  }
  for (int64_t i = 0; i < nx; ++i)
    hsu::row_grad(p.normalize, &x[i * D], p.normalize ? rx[i] : 1.0, &acc[i * D], rad[i],
                  lse ? gs * std::exp(shift[i] - lz) : gs, lse ? kd[i] * std::exp(ed[i] - lz) : kd[i], D,
                  &grad[i * D]);
  return value;
}

void test_energy_and_grad(std::mt19937_64& rng) {
  std::normal_distribution<double> nd;
  const int64_t n = 5, ny = 4, D = 4;
  for (int64_t kind = 0; kind < hsu::kNumKinds; ++kind) {
    const bool lse = kind == hsu::kGaussian;
    for (double s : {1.0, 2.0, 3.5}) {
      if (kind != hsu::kRiesz && kind != hsu::kAngular && s != 1.0) continue;
      for (int norm = 0; norm < 2; ++norm) {
        if (!norm && hsu::kind_info(kind).angle) continue;
        for (int hs = 0; hs < 2; ++hs) {
          for (double eps : {1e-4, 0.0, 0.3}) {
            if (!norm && eps != 1e-4) continue;
            for (int close = 0; close < 2; ++close) {
              const auto p = params(kind, s, hs, norm);
              const std::string tag = std::string(kind_name(kind)) + " s=" + std::to_string(s) +
                                      " hs=" + std::to_string(hs) + " norm=" + std::to_string(norm) +
                                      " eps=" + std::to_string(eps) + " close=" + std::to_string(close);
              std::vector<double> w(n * D), y(ny * D), g;
              for (double& v : w) v = nd(rng);
              for (double& v : y) v = nd(rng);
              if (close) {
                // a near duplicate (exact ones coincide when eps = 0 or un-normalized) and a near antipode,
                // 1e-3 apart: the fast path flags them, so the careful path is what is tested
                for (int64_t d = 0; d < D; ++d) {
                  w[1 * D + d] = w[d] + 1e-3 * nd(rng);
                  w[3 * D + d] = -w[2 * D + d] + 1e-3 * nd(rng);
                  y[d] = w[d] + 1e-3 * nd(rng);
                }
              }
              auto self_f = [&] {
                const double e = naive_self(kind, s, hs, norm, w, n, D, eps);
                return lse ? std::log(e) : e;
              };
              auto cross_f = [&] {
                const double e = naive_cross(kind, s, hs, norm, w, y, n, ny, D, eps);
                return lse ? std::log(e) : e;
              };
              int careful = 0;
              const double e = header_rows(p, w, w, n, n, D, eps, true, g, &careful);
              // (with eps_norm = 0.3 the rows' own a_i keep 1 - |g| above close_tau: not close)
              if (close && eps <= 1e-4) expect_close(careful > 0, 1.0, 0.0, 0.0, "close pairs took the careful path " + tag);
              expect_close(e, self_f(), 1e-11, 0.0, "self energy " + tag);
              for (int64_t k = 0; k < n * D; ++k) {
                // rows 0-3 of the close case are 1e-3 apart: a step below that, and the rounding of the
                // energy (dominated by the close pairs) divided by the step on top of the tolerance
                const double h = close && k < 4 * D ? 1e-6 : 1e-3;
                const double fd = central_diff(self_f, w[k], h);
                expect_close(g[k], fd, 2e-6, 1e-9 + 1e-15 * std::fabs(e) / h, "self grad " + tag + " k=" + std::to_string(k));
              }
              // cross energy, gradient to x (the y side is the same code with the roles swapped)
              const double ec = header_rows(p, w, y, n, ny, D, eps, false, g);
              expect_close(ec, cross_f(), 1e-11, 0.0, "cross energy " + tag);
              for (int64_t k = 0; k < n * D; ++k) {
                const double h = close && k < 4 * D ? 1e-6 : 1e-3;
                const double fd = central_diff(cross_f, w[k], h);
                expect_close(g[k], fd, 2e-6, 1e-9 + 1e-15 * std::fabs(ec) / h, "cross grad " + tag + " k=" + std::to_string(k));
              }
            }
          }
        }
      }
    }
  }
}

// The careful path on exact duplicates and antipodes of large norm: 1 - |g| = (a_i + a_j) / 2 exactly,
// where any dot product would have rounded it to 0.
void test_careful_duplicates(std::mt19937_64& rng) {
  std::normal_distribution<double> nd;
  for (double norm : {1.0, 100.0, 1e8, 1e150}) {
    std::vector<double> w(6);
    double q = 0.0;
    for (int d = 0; d < 3; ++d) q += (w[d] = nd(rng)) * w[d];
    for (int d = 0; d < 3; ++d) w[d] *= norm / std::sqrt(q), w[3 + d] = w[d];
    double r, a;
    hsu::row_norm(w.data(), 3, 1e-4, r, a);
    expect_close(a, 1e-4 / (norm * norm + 1e-4), 1e-14, 0.0, "a = eps / (|w|^2 + eps) at norm " + std::to_string(norm));
    const hsu::CarefulGeom dup = hsu::careful_geom<true>(w.data(), w.data() + 3, 3, r, r, a, a);
    expect_close(dup.om, a, 1e-15, 0.0, "duplicates: 1 - g = a at norm " + std::to_string(norm));
    expect_close(dup.sign, 1.0, 0.0, 0.0, "duplicates: g > 0");
    for (int d = 0; d < 3; ++d) w[3 + d] = -w[d];
    const hsu::CarefulGeom anti = hsu::careful_geom<true>(w.data(), w.data() + 3, 3, r, r, a, a);
    expect_close(anti.om, a, 1e-15, 0.0, "antipodes: 1 + g = a at norm " + std::to_string(norm));
    expect_close(anti.sign, -1.0, 0.0, 0.0, "antipodes: g < 0");
    for (int d = 0; d < 3; ++d) w[3 + d] = 2.0 * w[d];
    double r2, a2;
    hsu::row_norm(w.data() + 3, 3, 1e-4, r2, a2);
    const hsu::CarefulGeom par = hsu::careful_geom<true>(w.data(), w.data() + 3, 3, r, r2, a, a2);
    const double rho = std::sqrt(1 - a), rho2 = std::sqrt(1 - a2), drho = (a2 - a) / (rho + rho2);
    expect_close(par.om, 0.5 * (a + a2 + drho * drho), 1e-12, 0.0, "w and 2w: 1 - g at norm " + std::to_string(norm));
  }
  // eps_norm = 0, exact duplicates: distance 0, an infinite Riesz / log term (not the careful scale q = 1
  // standing in for it) and a gradient with no direction (NaN); antipodes: the far side, finite
  std::vector<double> w = {0.3, -1.2, 2.0, 0.3, -1.2, 2.0};
  double r, a;
  hsu::row_norm(w.data(), 3, 0.0, r, a);
  const hsu::CarefulGeom dup = hsu::careful_geom<true>(w.data(), w.data() + 3, 3, r, r, a, a);
  for (int64_t kind : {hsu::kRiesz, hsu::kLog}) {
    double e;
    const hsu::CarefulCoef k = hsu::careful_terms_rt(params(kind, 1.0, false, true), 1.0, dup, e);
    expect_close(e, INFINITY, 0.0, 0.0, std::string("eps_norm = 0 duplicates: infinite ") + kind_name(kind));
    std::vector<double> acc(3, 0.0);
    double rad = 0.0, unused = 0.0;
    hsu::careful_apply<true>(k, dup.sign, w.data(), w.data() + 3, 3, r, r, a, a, acc.data(), (double*)nullptr, rad, unused);
    expect_close(std::isnan(acc[0]) ? 1.0 : 0.0, 1.0, 0.0, 0.0, std::string("eps_norm = 0 duplicates: NaN gradient ") + kind_name(kind));
  }
  // w and 2^k w with eps_norm = 0: the same point on the sphere, exactly
  for (double f : {4.0, 0.125, 1024.0}) {
    for (int d = 0; d < 3; ++d) w[3 + d] = f * w[d];
    double r2, a2;
    hsu::row_norm(w.data() + 3, 3, 0.0, r2, a2);
    const hsu::CarefulGeom par = hsu::careful_geom<true>(w.data(), w.data() + 3, 3, r, r2, a, a2);
    expect_close(par.om, 0.0, 0.0, 0.0, "eps_norm = 0: w and " + std::to_string(f) + " w coincide exactly");
  }
  for (int d = 0; d < 3; ++d) w[3 + d] = -w[d];
  const hsu::CarefulGeom anti = hsu::careful_geom<true>(w.data(), w.data() + 3, 3, r, r, a, a);
  double e;
  const hsu::CarefulCoef k = hsu::careful_terms_rt(params(hsu::kLog, 1.0, false, true), 1.0, anti, e);
  expect_close(e, -std::log(4.0), 1e-15, 0.0, "eps_norm = 0 antipodes: the far side, -log 4");
  std::vector<double> acc(3, 0.0);
  double rad = 0.0, unused = 0.0;
  hsu::careful_apply<true>(k, anti.sign, w.data(), w.data() + 3, 3, r, r, a, a, acc.data(), (double*)nullptr, rad, unused);
  expect_close(acc[0] + acc[1] + acc[2] + rad, 0.0, 0.0, 1e-15, "eps_norm = 0 antipodes: no gradient");
}

void test_diag_term(std::mt19937_64& rng) {
  std::normal_distribution<double> nd;
  const int64_t D = 3;
  for (int64_t kind = 0; kind < hsu::kNumKinds; ++kind) {
    for (int norm = 0; norm < 2; ++norm) {
      if (!norm && hsu::kind_info(kind).angle) continue;
      for (double eps : {1e-4, 0.5, 0.0}) {
        if (!norm && eps != 1e-4) continue;
        const auto p = params(kind, 1.5, true, norm);
        const std::string tag = std::string(kind_name(kind)) + " norm=" + std::to_string(norm) + " eps=" + std::to_string(eps);
        std::vector<double> w(D);
        for (double& v : w) v = 0.3 * nd(rng);
        // the term as diag_term sees it: stat = a = eps/(|w|^2 + eps) normalized, |w|^2 otherwise
        auto term_of = [&](const std::vector<double>& v, double& k) {
          double q = 0;
          for (double c : v) q += c * c;
          double e;
          hsu::diag_term(p, norm ? eps / (q + eps) : q, e, k);
          return e;
        };
        double k;
        const double e = term_of(w, k);
        double q = 0;
        for (double c : w) q += c * c;
        // the pair (w, -w): phi at g = -|w|^2/(|w|^2 + eps) normalized, at d2 = 4|w|^2 otherwise (the
        // Gaussian kind: its log term)
        const double phi = norm ? phi_closed(kind, 1.5, -q / (q + eps)) : phi_closed(kind, 1.5, 1.0 - 2.0 * q);
        expect_close(e, hsu::kind_info(kind).logsum ? std::log(phi) : phi, 1e-12, 0.0, "diag energy " + tag);
        // d(term)/dw = k r u = k w / (|w|^2 + eps) normalized, k w otherwise
        const double coef = norm ? k / (q + eps) : k;
        for (int64_t d = 0; d < D; ++d) {
          std::vector<double> wp(w), wm(w);
          const double h = 1e-6;
          wp[d] += h;
          wm[d] -= h;
          double unused;
          expect_close(coef * w[d], (term_of(wp, unused) - term_of(wm, unused)) / (2 * h), 1e-5, 1e-8, "diag grad " + tag);
        }
        if (norm && eps == 0.0) expect_close(k, 0.0, 0.0, 0.0, "diag grad is 0 for exact unit rows " + tag);
      }
    }
  }
}

void test_scales() {
  expect_close(hsu::pair_scale<double>(true, false), 0.5, 0, 0, "pair_scale self");
  expect_close(hsu::pair_scale<double>(true, true), 1.0, 0, 0, "pair_scale self half-space");
  expect_close(hsu::pair_scale<double>(false, false), 1.0, 0, 0, "pair_scale cross");
  expect_close(hsu::grad_scale<double>(true, false), 1.0, 0, 0, "grad_scale self");
  expect_close(hsu::grad_scale<double>(true, true), 2.0, 0, 0, "grad_scale self half-space");
  expect_close(hsu::grad_scale<double>(false, true), 1.0, 0, 0, "grad_scale cross");
}

}  // namespace

int main() {
  std::mt19937_64 rng(20240531);
  test_phi();
  test_float_math();
  test_diag_term(rng);
  test_scales();
  test_energy_and_grad(rng);
  test_careful_duplicates(rng);
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
