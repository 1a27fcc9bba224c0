// Per-pair terms of the small-D kernel (csrc/cpu/hsu_cpu_small.cpp), on top of the shared phi / phi' of
// csrc/hsu_pair.h.
//
// The small-D kernels never form 2 - 2g. They get the squared distances of a pair from coordinate
// differences: with u_i = w_i / sqrt(|w_i|^2 + eps_norm) and a_i = eps_norm / (|w_i|^2 + eps_norm), so that
// |u_i|^2 = 1 - a_i,
//     d2m = 2 - 2 g = |u_i - u_j|^2 + a_i + a_j,     d2p = 2 + 2 g = |u_i + u_j|^2 + a_i + a_j
// (un-normalized rows: d2m = |x_i - x_j|^2, d2p = |x_i + x_j|^2), and they accumulate the gradient in terms
// of the same differences:
//   normalized:    dE/du_i = A_i + K_i u_i  with  A_i = sum_j (-cm (u_i - u_j) + cp (u_i + u_j)),
//                                                 K_i = sum_j (cm - cp),
//                  where cm = dphi/dg(g) and cp = -dphi/dg(-g) (the antipodal image -u_j, half-space only):
//                  cm u_j = cm u_i - cm (u_i - u_j) and -dphi/dg(-g) u_j = cp (u_i + u_j) - cp u_i.
//                  A nearly parallel (or antipodal) pair puts its large coefficient in K, which the row
//                  epilogue uses without cancellation, and only a coefficient times a small difference in A.
//   un-normalized: dE/dx_i = A_i = sum_j (cm (x_i - x_j) + cp (x_i + x_j)),  cm = 2 f'(d2m), cp = 2 f'(d2p).
#pragma once

#include "hsu_pair.h"
#include "hsu_isa.h"

namespace hsu {
HSU_ISA_BEGIN

// The pair's energy f (phi, plus phi(-g) in half-space mode) and its coefficients cm, cp (see above), from
// its squared distances d2m and d2p (d2p is read by the half-space and angular kinds only).
template <int64_t KIND, bool HS, bool NORM, int MODE, typename T>
HSU_HD void small_pair(T s, T t, T eps_ang, T d2m, T d2p, T& f, T& cm, T& cp) {
  if constexpr (KindTraits<KIND>::angle) {
    // g = (d2p - d2m) / 4 and 1 - |g| = min(d2m, d2p) / 2, both without cancellation
    const T g = T(0.25) * (d2p - d2m);
    const T om = T(0.5) * hsu_min(d2m, d2p);
    T df;
    phi_g_om_k<KIND, MODE, T, T>(s, t, eps_ang, g, om, f, df);
    cm = df;
    cp = T(0);
    if (HS) {
      T f2, df2;
      phi_g_om_k<KIND, MODE, T, T>(s, t, eps_ang, -g, om, f2, df2);
      f += f2;
      cp = -df2;
    }
  } else {
    T df, f2 = T(0), df2 = T(0);
    phi_d2_k<KIND, MODE>(s, t, d2m, f, df);
    if (HS) phi_d2_k<KIND, MODE>(s, t, d2p, f2, df2);
    f += f2;
    // normalized: dphi/dg = -2 f'(2 - 2g), and -dphi/dg at -g is 2 f'(2 + 2g); un-normalized: 2 f'
    cm = NORM ? T(-2) * df : T(2) * df;
    cp = T(2) * df2;
  }
}

// The row epilogue: dE/dw_i from A_i, K_i (see above), all in double. `u` is u_i (normalized) or unused,
// `a` is a_i, `r` = 1 / sqrt(|w_i|^2 + eps_norm), `rad` the careful pairs' radial coefficients times a_i
// (hsu_pair.h's careful_apply; those pairs' small vectors are in A), `scale` the self energy's grad_scale
// (times the output scale) and k_diag the half-space self pair's coefficient as diag_term gives it (its
// term's derivative is k_diag r u_i normalized, k_diag x_i un-normalized). Through u = r w:
//   dE/dw_i = r (scale (A - (A.u) u + (K a + rad) u) + k_diag u)       (using |u|^2 = 1 - a)
//   un-normalized: dE/dx_i = scale A + k_diag x_i.
HSU_HD void small_row_grad(bool normalize, const double* w, const double* u, double a, double r, const double* A,
                           double K, double rad, double scale, double k_diag, int64_t D, double* out) {
  if (normalize) {
    double au = 0.0;
    for (int64_t d = 0; d < D; ++d) au += A[d] * u[d];
    const double radial = K * a + rad - au;
    for (int64_t d = 0; d < D; ++d) out[d] = r * (scale * (A[d] + radial * u[d]) + k_diag * u[d]);
  } else {
    for (int64_t d = 0; d < D; ++d) out[d] = scale * A[d] + k_diag * w[d];
  }
}

HSU_ISA_END
}  // namespace hsu
