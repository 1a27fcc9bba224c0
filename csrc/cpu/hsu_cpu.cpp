// The C++ CPU kernel: energy and gradient fused in one pass over tiles, multi-threaded with
// at::parallel_for, no N x N buffer (docs/spec.md §6). This file holds the op entry points (energy_grad_cpu,
// cross_energy_grad_cpu, registered by hsu_cpu_dispatch.cpp): the argument checks, the row statistics, one
// pass per side by the engine that serves it, the row epilogue and the reduction of the energy. The engines:
//
//  * self energies (every D): symmetric tiles, csrc/cpu/hsu_cpu_self.cpp (pair-sum kinds) and
//    csrc/cpu/hsu_cpu_logsum.cpp (the log-sum kind, the Gaussian), one round-robin tile schedule;
//  * cross energies (rows of x against rows of y): direct or GEMM row strips, csrc/cpu/hsu_cpu_cross.cpp;
//  * self energies at D <= 4: csrc/cpu/hsu_cpu_small.cpp;
//
// and csrc/cpu/hsu_cpu_internal.h what they share.
//
// Numerics (README "Precision"): rows are normalized once, in double, after a power-of-two rescaling
// (u = w r, no |w|^2 overflows); tiles multiply u rows, so g needs no row statistics. Every pair the
// vectorized loop flags (hsu_pair.h: 1 - |g| below close_tau, or a term not finite in T) is recomputed on
// the careful path, in double from the rows' coordinates, and its gradient enters as a small vector plus
// a radial coefficient the epilogue applies in closed form. The log-sum kind (the Gaussian) is an online
// log-sum-exp: each row keeps a shift (the largest tile maximum it has seen) and its sums are rescaled when
// it grows; the rows' sums are combined into log Z here.
//
// Determinism: work is split into fixed blocks (independent of the thread count), each row's sums are
// accumulated in a fixed order, and the per-row energies are reduced serially in double.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../hsu_checks.h"
#include "../hsu_kinds.h"
#include "../hsu_pair.h"
#include "hsu_cpu_internal.h"
#include "hsu_cpu_small.h"

namespace hsu {

// The close-pair check (and the careful path it leads to) can be switched off for one measurement: the
// benchmark's "close-pair check off" column times the kernel without it on inputs that have no close
// pair, which is the check's whole cost there. Set from Python through hsu_kernels._C._set_close_pair_check;
// it applies to the pair-sum kinds' tiles and strips (PassCtx::check), and in the D <= 4 kernel to float64
// rows of every kind.
extern std::atomic<bool> g_close_pair_check;  // csrc/cpu/hsu_cpu_dispatch.cpp

HSU_ISA_BEGIN
namespace cpu {
namespace {

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


// One pass for every batch entry: rows of X[b] against rows of Y[b], by the engine that serves it.
template <typename T>
void row_pass(const PassCtx<T>& cx, const Prepared<T>& X, const Prepared<T>& Y, bool self, RowOut<T> out) {
  if (!self) return cross_pass<T>(cx, X, Y, out);
  if (kind_info(cx.p.kind).logsum) logsum_self_pass<T>(cx, X, out);
  else self_pass<T>(cx, X, out);
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
}  // namespace cpu

using namespace cpu;

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
