// Argument checks shared by the CPU and CUDA op entry points.
#pragma once

#include <ATen/ATen.h>

#include "hsu_pair.h"

namespace hsu {

inline void check_common(const at::Tensor& w, const char* name, int64_t kind, double s, double t,
                         double eps_norm, bool normalize) {
  TORCH_CHECK_VALUE(w.dim() == 3, name, " must have shape [B, N, D], got ", w.sizes());
  TORCH_CHECK_TYPE(w.is_floating_point(), name, " must be a floating tensor, got ", w.scalar_type());
  TORCH_CHECK_VALUE(w.size(2) >= 1, name, " must have D >= 1");
  TORCH_CHECK_VALUE(kind >= 0 && kind < kNumKinds, "kind code must be in [0, ", kNumKinds, "), got ", kind);
  if (kind == kRiesz || kind == kAngular) TORCH_CHECK_VALUE(s > 0, "s must be > 0, got ", s);
  TORCH_CHECK_VALUE(t > 0, "t must be > 0, got ", t);
  TORCH_CHECK_VALUE(eps_norm >= 0, "eps_norm must be >= 0, got ", eps_norm);
  TORCH_CHECK_VALUE(normalize || (kind != kAngular && kind != kAngularLog),
                    "angular kinds need normalize=True");
}

// The checks of a cross energy's two sets: each as above, and the same batch size and D.
inline void check_cross(const at::Tensor& x, const at::Tensor& y, int64_t kind, double s, double t, double eps_norm,
                        bool normalize) {
  check_common(x, "x", kind, s, t, eps_norm, normalize);
  check_common(y, "y", kind, s, t, eps_norm, normalize);
  TORCH_CHECK_VALUE(x.size(0) == y.size(0) && x.size(2) == y.size(2),
                    "x and y must have the same batch size and D, got ", x.sizes(), " and ", y.sizes());
}

template <typename T>
Params<T> make_params(int64_t kind, double s, double t, double eps_ang, bool half_space, bool normalize) {
  return Params<T>{kind, static_cast<T>(s), static_cast<T>(t), static_cast<T>(eps_ang), half_space, normalize};
}

}  // namespace hsu
