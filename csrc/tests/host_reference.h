// The host reference of the CUDA tests (test_cuda_emulated.cpp, cuda_compile_check.cu): energy and
// gradient of rows x against rows y in double, every pair on the header's careful path (coordinates, no
// dot product), so it is exact where the device's fast path is only accurate.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "../hsu_pair.h"

namespace hsu_test {

inline void careful_logs_rt(const hsu::Params<double>& p, const hsu::CarefulGeom& q, double& x1, double& x2) {
  if (p.normalize) p.half_space ? hsu::careful_logs<true, true>(p.t, q, x1, x2) : hsu::careful_logs<false, true>(p.t, q, x1, x2);
  else p.half_space ? hsu::careful_logs<true, false>(p.t, q, x1, x2) : hsu::careful_logs<false, false>(p.t, q, x1, x2);
}

// energy[b] = scale * sum of the pair terms (self: over unordered pairs, plus the half-space self terms), or
// for the Gaussian kind log(scale * sum exp(-t d2)); grad = d energy / dx.
inline void host_energy_grad(const hsu::Params<double>& p, const std::vector<double>& x, const std::vector<double>& y,
                             int64_t B, int64_t n1, int64_t n2, int64_t D, double eps, bool self, double scale,
                             std::vector<double>& energy, std::vector<double>& grad) {
  energy.assign(B, 0.0);
  grad.assign(B * n1 * D, 0.0);
  const bool lse = p.kind == hsu::kGaussian;
  const double ps = hsu::pair_scale<double>(self, p.half_space), gs = hsu::grad_scale<double>(self, p.half_space);
  auto stats = [&](const std::vector<double>& v, int64_t b, int64_t n, std::vector<double>& r, std::vector<double>& a) {
    r.resize(n);
    a.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      const double* row = &v[(b * n + i) * D];
      if (p.normalize) hsu::row_norm(row, D, eps, r[i], a[i]);
      else r[i] = hsu::row_sq(row, D), a[i] = 0.0;
    }
  };
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> rx, ax, ry, ay;
    stats(x, b, n1, rx, ax);
    stats(y, b, n2, ry, ay);
    std::vector<double> l1(n1 * n2, -INFINITY), l2(n1 * n2, -INFINITY), ed(n1, 0.0), kd(n1, 0.0);
    std::vector<hsu::CarefulGeom> geo(n1 * n2);
    std::vector<double> acc(n1 * D, 0.0), rad(n1, 0.0);
    double pairs = 0.0;
    for (int64_t i = 0; i < n1; ++i) {
      const double* xi = &x[(b * n1 + i) * D];
      for (int64_t j = 0; j < n2; ++j) {
        if (self && i == j) continue;
        const double* yj = &y[(b * n2 + j) * D];
        const hsu::CarefulGeom q = hsu::careful_geom<true>(xi, yj, D, rx[i], ry[j], ax[i], ay[j]);
        const hsu::CarefulGeom qr = hsu::careful_geom<false>(xi, yj, D, 1.0, 1.0, 0.0, 0.0);
        geo[i * n2 + j] = p.normalize ? q : qr;
        if (lse) {
          careful_logs_rt(p, geo[i * n2 + j], l1[i * n2 + j], l2[i * n2 + j]);
          continue;
        }
        double e, unused = 0.0;
        const hsu::CarefulCoef k = hsu::careful_terms_rt(p, 1.0, geo[i * n2 + j], e);
        pairs += e;
        if (p.normalize)
          hsu::careful_apply<true>(k, q.sign, xi, yj, D, rx[i], ry[j], ax[i], ay[j], &acc[i * D], (double*)nullptr,
                                   rad[i], unused);
        else
          hsu::careful_apply<false>(k, 1.0, xi, yj, D, 1.0, 1.0, 0.0, 0.0, &acc[i * D], (double*)nullptr, unused,
                                    unused);
      }
      if (self && p.half_space) hsu::diag_term(p, p.normalize ? ax[i] : rx[i], ed[i], kd[i]);
    }
    double lz = 0.0;
    if (lse) {
      double top = -INFINITY;
      for (size_t k = 0; k < l1.size(); ++k) top = std::fmax(top, std::fmax(l1[k], l2[k]));
      for (int64_t i = 0; self && p.half_space && i < n1; ++i) top = std::fmax(top, ed[i]);
      double z = 0.0;
      for (size_t k = 0; k < l1.size(); ++k) z += ps * (std::exp(l1[k] - top) + std::exp(l2[k] - top));
      for (int64_t i = 0; self && p.half_space && i < n1; ++i) z += std::exp(ed[i] - top);
      lz = top + std::log(z);
      energy[b] = lz + std::log(scale);
      for (int64_t i = 0; i < n1; ++i)
        for (int64_t j = 0; j < n2; ++j) {
          if (self && i == j) continue;
          const hsu::CarefulGeom& q = geo[i * n2 + j];
          const double w1 = std::exp(l1[i * n2 + j] - lz), w2 = std::exp(l2[i * n2 + j] - lz);
          const double* xi = &x[(b * n1 + i) * D];
          const double* yj = &y[(b * n2 + j) * D];
          double unused = 0.0;
          if (p.normalize)
            hsu::careful_apply<true>(hsu::careful_gauss_coef<true>(p.t, w1, w2), q.sign, xi, yj, D, rx[i], ry[j],
                                     ax[i], ay[j], &acc[i * D], (double*)nullptr, rad[i], unused);
          else
            hsu::careful_apply<false>(hsu::careful_gauss_coef<false>(p.t, w1, w2), 1.0, xi, yj, D, 1.0, 1.0, 0.0,
                                      0.0, &acc[i * D], (double*)nullptr, unused, unused);
        }
    } else {
      double diag = 0.0;
      for (int64_t i = 0; i < n1; ++i) diag += ed[i];
      energy[b] = scale * (ps * pairs + diag);
    }
    for (int64_t i = 0; i < n1; ++i) {
      const double* xi = &x[(b * n1 + i) * D];
      const double k = lse ? kd[i] * std::exp(ed[i] - lz) : kd[i] * scale;
      hsu::row_grad(p.normalize, xi, p.normalize ? rx[i] : 1.0, &acc[i * D], rad[i], lse ? gs : gs * scale, k, D,
                    &grad[(b * n1 + i) * D]);
    }
  }
}

}  // namespace hsu_test
