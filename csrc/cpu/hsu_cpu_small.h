// The CPU self-energy kernel for points in low dimension (D <= kSmallMaxD), csrc/cpu/hsu_cpu_small.cpp.
// csrc/cpu/hsu_cpu.cpp's energy_grad hands such inputs to it after its argument checks.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include "../hsu_isa.h"

namespace hsu {
HSU_ISA_BEGIN

constexpr int64_t kSmallMaxD = 4;

// Whether the small-D kernel computes this self energy (D <= kSmallMaxD, every kind but the log-sum one, every
// floating dtype). An unknown kind code raises.
bool small_d_serves(const at::Tensor& w, int64_t kind);

// The op's self energy and gradient (same contract as hsu::energy_grad on CPU: E = scale * the sum); the
// caller has run check_common and the N >= 2 check.
std::tuple<at::Tensor, at::Tensor> energy_grad_small_cpu(const at::Tensor& w, int64_t kind, double s, double t,
                                                         double eps_norm, double eps_ang, bool half_space,
                                                         bool normalize, double scale);

HSU_ISA_END
}  // namespace hsu
