// Host test of the per-pair header csrc/hsu_pair.h (no torch): run by ctest (CMakeLists.txt).
//
//  1. phi and phi' of every kind against the closed forms of docs/spec.md §3 and against central finite
//     differences, in double, through the run-time dispatch (phi_g, phi_d2) and every exponent mode;
//  2. the host float exp/log/acos against double libm;
//  3. the half-space self term (diag_term) and its gradient coefficient against finite differences;
//  4. pair_terms + row_grad + pair_scale/grad_scale: the energy and gradient of small self and cross
//     energies, against an independent naive energy (half-space by concatenating [W, -W]) and its
//     finite-difference gradient.
#include <cmath>
#include <cstdio>
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

const char* kind_name(int64_t k) {
  static const char* names[] = {"riesz", "log", "angular", "angular_log", "gaussian"};
  return names[k];
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
    default: return std::exp(-kT * d2);
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
    default: return 2.0 * kT * std::exp(-kT * d2);
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
  switch (kind) {
    case hsu::kRiesz: hsu::phi_g_k<hsu::kRiesz, MODE>(s, kT, kEpsAng, g, f, df); break;
    case hsu::kLog: hsu::phi_g_k<hsu::kLog, MODE>(s, kT, kEpsAng, g, f, df); break;
    case hsu::kAngular: hsu::phi_g_k<hsu::kAngular, MODE>(s, kT, kEpsAng, g, f, df); break;
    case hsu::kAngularLog: hsu::phi_g_k<hsu::kAngularLog, MODE>(s, kT, kEpsAng, g, f, df); break;
    default: hsu::phi_g_k<hsu::kGaussian, MODE>(s, kT, kEpsAng, g, f, df); break;
  }
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
      if (kind == hsu::kAngular || kind == hsu::kAngularLog) continue;
      for (double d2 = 0.05; d2 < 6.0; d2 += 0.37) {
        const std::string tag = std::string(kind_name(kind)) + " s=" + std::to_string(s) + " d2=" + std::to_string(d2);
        double f, df;
        hsu::phi_d2(p, d2, f, df);
        const double g = 1.0 - d2 / 2.0;  // phi as a function of d2 is the table's phi at g = 1 - d2/2
        expect_close(f, kind == hsu::kRiesz ? std::pow(d2, -s / 2) : kind == hsu::kLog ? -std::log(d2) : std::exp(-kT * d2),
                     1e-13, 0.0, "phi_d2 " + tag);
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

// Naive energy of a point set: every unordered pair, closed forms, no header function involved.
double naive_pair(int64_t kind, double s, bool norm, const double* x, const double* y, int64_t D, double eps) {
  double xx = 0, yy = 0, xy = 0, diff = 0;
  for (int64_t d = 0; d < D; ++d) {
    xx += x[d] * x[d];
    yy += y[d] * y[d];
    xy += x[d] * y[d];
    diff += (x[d] - y[d]) * (x[d] - y[d]);
  }
  if (norm) return phi_closed(kind, s, xy / std::sqrt((xx + eps) * (yy + eps)));
  return phi_closed(kind, s, 1.0 - diff / 2.0);  // phi as a function of d2 = |x - y|^2
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

// d f / d v by the fourth-order central difference (step 1e-3): truncation error ~1e-12 f^(5), far below
// the roundoff of the two-point formula at the step where its truncation error would be as small.
double central_diff(const std::function<double()>& f, double& v) {
  const double h = 1e-3, keep = v;
  auto at = [&](double x) {
    v = x;
    return f();
  };
  const double d = (8.0 * (at(keep + h) - at(keep - h)) - (at(keep + 2 * h) - at(keep - 2 * h))) / (12.0 * h);
  v = keep;
  return d;
}

// Energy and dE/dx of rows x against rows y through the header, as the kernels compute them.
double header_rows(const hsu::Params<double>& p, const std::vector<double>& x, const std::vector<double>& y,
                   int64_t nx, int64_t ny, int64_t D, double eps, bool self, std::vector<double>& grad) {
  auto stats = [&](const std::vector<double>& v, int64_t n, std::vector<double>& sq, std::vector<double>& st) {
    sq.resize(n);
    st.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      double acc = 0.0;
      for (int64_t d = 0; d < D; ++d) acc += v[i * D + d] * v[i * D + d];
      sq[i] = acc;
      st[i] = hsu::row_stat(p, acc, eps);
    }
  };
  std::vector<double> sqx, stx, sqy, sty;
  stats(x, nx, sqx, stx);
  stats(y, ny, sqy, sty);
  grad.assign(nx * D, 0.0);
  double pairs = 0.0, diag = 0.0;
  std::vector<double> a(D);
  for (int64_t i = 0; i < nx; ++i) {
    std::fill(a.begin(), a.end(), 0.0);
    double b = 0.0;
    for (int64_t j = 0; j < ny; ++j) {
      if (self && j == i) continue;
      double dot = 0.0;
      for (int64_t d = 0; d < D; ++d) dot += x[i * D + d] * y[j * D + d];
      double e, cj, ci;
      hsu::pair_terms(p, dot, stx[i], sty[j], e, cj, ci);
      pairs += e;
      b += ci;
      for (int64_t d = 0; d < D; ++d) a[d] += cj * y[j * D + d];
    }
    double ed = 0.0, k = 0.0;
    if (self && p.half_space) hsu::diag_term(p, sqx[i], eps, ed, k);
    diag += ed;
    hsu::row_grad(p, &x[i * D], stx[i], a.data(), b, hsu::grad_scale<double>(self, p.half_space), k, D, &grad[i * D]);
  }
  return hsu::pair_scale<double>(self, p.half_space) * pairs + diag;
}

void test_energy_and_grad(std::mt19937_64& rng) {
  std::normal_distribution<double> nd;
  const int64_t n = 5, ny = 4, D = 4;
  for (int64_t kind = 0; kind < hsu::kNumKinds; ++kind) {
    for (double s : {1.0, 2.0, 3.5}) {
      if (kind != hsu::kRiesz && kind != hsu::kAngular && s != 1.0) continue;
      for (int norm = 0; norm < 2; ++norm) {
        if (!norm && (kind == hsu::kAngular || kind == hsu::kAngularLog)) continue;
        for (int hs = 0; hs < 2; ++hs) {
          for (double eps : {1e-4, 0.0, 0.3}) {
            if (!norm && eps != 1e-4) continue;
            const auto p = params(kind, s, hs, norm);
            const std::string tag = std::string(kind_name(kind)) + " s=" + std::to_string(s) +
                                    " hs=" + std::to_string(hs) + " norm=" + std::to_string(norm) +
                                    " eps=" + std::to_string(eps);
            std::vector<double> w(n * D), y(ny * D), g;
            for (double& v : w) v = nd(rng);
            for (double& v : y) v = nd(rng);
            // self energy
            const double e = header_rows(p, w, w, n, n, D, eps, true, g);
            expect_close(e, naive_self(kind, s, hs, norm, w, n, D, eps), 1e-11, 0.0, "self energy " + tag);
            for (int64_t k = 0; k < n * D; ++k) {
              const double fd = central_diff([&] { return naive_self(kind, s, hs, norm, w, n, D, eps); }, w[k]);
              expect_close(g[k], fd, 2e-6, 1e-9, "self grad " + tag + " k=" + std::to_string(k));
            }
            // cross energy, gradient to x (the y side is the same code with the roles swapped)
            const double ec = header_rows(p, w, y, n, ny, D, eps, false, g);
            expect_close(ec, naive_cross(kind, s, hs, norm, w, y, n, ny, D, eps), 1e-11, 0.0, "cross energy " + tag);
            for (int64_t k = 0; k < n * D; ++k) {
              const double fd = central_diff([&] { return naive_cross(kind, s, hs, norm, w, y, n, ny, D, eps); }, w[k]);
              expect_close(g[k], fd, 2e-6, 1e-9, "cross grad " + tag + " k=" + std::to_string(k));
            }
          }
        }
      }
    }
  }
}

void test_diag_term(std::mt19937_64& rng) {
  std::normal_distribution<double> nd;
  const int64_t D = 3;
  for (int64_t kind = 0; kind < hsu::kNumKinds; ++kind) {
    for (int norm = 0; norm < 2; ++norm) {
      if (!norm && (kind == hsu::kAngular || kind == hsu::kAngularLog)) continue;
      for (double eps : {1e-4, 0.5, 0.0}) {
        if (!norm && eps != 1e-4) continue;
        const auto p = params(kind, 1.5, true, norm);
        const std::string tag = std::string(kind_name(kind)) + " norm=" + std::to_string(norm) + " eps=" + std::to_string(eps);
        std::vector<double> w(D);
        for (double& v : w) v = 0.3 * nd(rng);
        auto energy_of = [&](const std::vector<double>& v) {
          double q = 0;
          for (double c : v) q += c * c;
          double e, k;
          hsu::diag_term(p, q, eps, e, k);
          return e;
        };
        double q = 0;
        for (double c : w) q += c * c;
        double e, k;
        hsu::diag_term(p, q, eps, e, k);
        // the pair (w, -w): phi at g = -|w|^2/(|w|^2 + eps) normalized, at d2 = 4|w|^2 otherwise
        const double want = norm ? phi_closed(kind, 1.5, -q / (q + eps)) : phi_closed(kind, 1.5, 1.0 - 2.0 * q);
        expect_close(e, want, 1e-12, 0.0, "diag energy " + tag);
        for (int64_t d = 0; d < D; ++d) {
          std::vector<double> wp(w), wm(w);
          const double h = 1e-6;
          wp[d] += h;
          wm[d] -= h;
          expect_close(k * w[d], (energy_of(wp) - energy_of(wm)) / (2 * h), 1e-5, 1e-8, "diag grad " + tag);
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
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
