// The CUDA self-energy kernel for D <= 4 (csrc/cuda/hsu_cuda_small.cuh), bound for torch in
// csrc/cuda/hsu_cuda_small.cu; csrc/cuda/hsu_cuda.cu's energy_grad hands such inputs to it after its checks.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace hsu {

// Whether the small-D CUDA kernel computes this self energy (D <= 4, every kind but the Gaussian).
bool small_d_serves_cuda(const at::Tensor& w, int64_t kind);

// Same contract as hsu::energy_grad on CUDA (E = scale * the sum); the caller has run check_common and the
// N >= 2 check.
std::tuple<at::Tensor, at::Tensor> energy_grad_small_cuda(const at::Tensor& w, int64_t kind, double s, double t,
                                                          double eps_norm, double eps_ang, bool half_space,
                                                          bool normalize, double scale);

}  // namespace hsu
