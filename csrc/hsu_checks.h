// Argument checks shared by the CPU and CUDA op entry points.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#include "hsu_isa.h"
#include "hsu_kinds.h"
#include "hsu_pair.h"

namespace hsu {
HSU_ISA_BEGIN

// Every numeric parameter is checked for finiteness too: NaN fails no comparison and would pass a plain
// "must be > 0" test written as a negation.
inline void check_common(const at::Tensor& w, const char* name, int64_t kind, double s, double t, double eps_norm,
                         double eps_ang, bool normalize, double scale) {
  TORCH_CHECK_VALUE(w.dim() == 3, name, " must have shape [B, N, D], got ", w.sizes());
  TORCH_CHECK_TYPE(w.is_floating_point(), name, " must be a floating tensor, got ", w.scalar_type());
  TORCH_CHECK_VALUE(w.size(2) >= 1, name, " must have D >= 1");
  // an unknown code fails here, before any kernel: "unknown kind code 5 (known: riesz 0, ...)"
  TORCH_CHECK_VALUE(kind_known(kind), unknown_kind_message(kind));
  const KindInfo k = kind_info(kind);
  TORCH_CHECK_VALUE(std::isfinite(s), "s must be finite, got ", s);
  if (k.power) TORCH_CHECK_VALUE(s > 0, "s must be > 0, got ", s);
  TORCH_CHECK_VALUE(std::isfinite(t) && t > 0, "t must be finite and > 0, got ", t);
  TORCH_CHECK_VALUE(std::isfinite(eps_norm) && eps_norm >= 0, "eps_norm must be finite and >= 0, got ", eps_norm);
  TORCH_CHECK_VALUE(std::isfinite(eps_ang) && eps_ang >= 0, "eps_ang must be finite and >= 0, got ", eps_ang);
  TORCH_CHECK_VALUE(std::isfinite(scale) && scale > 0, "scale must be finite and > 0, got ", scale);
  TORCH_CHECK_VALUE(normalize || !k.angle, "angular kinds need normalize=True");
}

// The checks of a cross energy's two sets: each as above, and the same batch size and D.
inline void check_cross(const at::Tensor& x, const at::Tensor& y, int64_t kind, double s, double t, double eps_norm,
                        double eps_ang, bool normalize, double scale) {
  check_common(x, "x", kind, s, t, eps_norm, eps_ang, normalize, scale);
  check_common(y, "y", kind, s, t, eps_norm, eps_ang, normalize, scale);
  TORCH_CHECK_VALUE(x.size(0) == y.size(0) && x.size(2) == y.size(2),
                    "x and y must have the same batch size and D, got ", x.sizes(), " and ", y.sizes());
}

// Whether un-normalized float rows (float, half or bfloat16 inputs, computed in float) can have squared
// norms or distances beyond float's range: 4 max|w|^2 (a bound on d2 and on the half-space sums) above
// FLT_MAX / 16. Such a call runs in double and its results are rounded back: the energy may then be
// +-inf, where its true value is beyond float, but the gradient is the true one wherever it fits (in float
// the squared norms overflow, and inf - inf gives NaN). One reduction over the rows; NaN/Inf rows are left to
// the finiteness check. Normalized rows are scale-free and rescaled where needed, double rows always fit.
// A log-sum kind (the Gaussian, given `kind` and `t`) also when its log terms -t d2 can pass 2^13 in magnitude:
// they are held in float, whose rounding there (~1e-3 absolute) moves the weights exp(x - max) of nearly tied
// pairs (float32 rows of norm 1e5, D = 1, with two pairs 160 apart in d2 of 1.8e10: a weight of 0.5 for 1e-66).
inline bool raw_rows_need_double(const at::Tensor& w, bool normalize, int64_t kind, double t) {
  if (normalize || w.scalar_type() == at::kDouble || w.numel() == 0) return false;
  const double top = w.abs().amax().item<double>();
  if (!std::isfinite(top)) return false;
  const double q = top * top * static_cast<double>(w.size(-1));
  return q > 0x1p122 || (kind_info(kind).logsum && 4.0 * t * q > 0x1p13);
}

template <typename T>
Params<T> make_params(int64_t kind, double s, double t, double eps_ang, bool half_space, bool normalize) {
  return Params<T>{kind, static_cast<T>(s), static_cast<T>(t), static_cast<T>(eps_ang), half_space, normalize};
}

HSU_ISA_END
}  // namespace hsu
