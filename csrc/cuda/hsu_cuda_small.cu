// torch binding of the D <= 4 CUDA kernel (csrc/cuda/hsu_cuda_small.cuh): allocation, the input checks the
// general binding makes (NaN/Inf, zero rows with eps_norm = 0), and the launches. Same dtypes as
// csrc/cuda/hsu_cuda.cu: float64 computed in float64, every other dtype in float32.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../hsu_checks.h"
#include "../hsu_pair.h"
#include "hsu_cuda_small.cuh"
#include "hsu_cuda_small.h"

namespace hsu {

bool small_d_serves_cuda(const at::Tensor& w, int64_t kind) {
  return w.dim() == 3 && w.size(2) >= 1 && w.size(2) <= cuda::kSmallDMax && kind != kGaussian;
}

std::tuple<at::Tensor, at::Tensor> energy_grad_small_cuda(const at::Tensor& w_in, int64_t kind, double s, double t,
                                                          double eps_norm, double eps_ang, bool half_space,
                                                          bool normalize, double scale) {
  TORCH_CHECK(small_d_serves_cuda(w_in, kind), "energy_grad_small_cuda called for D = ", w_in.size(-1));
  const c10::cuda::CUDAGuard guard(w_in.device());
  const auto dt = w_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor w = w_in.to(dt).contiguous();
  const int64_t B = w.size(0), n = w.size(1), D = w.size(2), rows = B * n;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(w.get_device()).stream();
  int num_sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, w.get_device()));
  at::Tensor energy = at::empty({B}, w.options().dtype(at::kDouble));
  at::Tensor grad = at::empty_like(w);
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "hsu_energy_grad_small_cuda", [&] {
    using T = scalar_t;
    at::Tensor hi = at::empty({rows, cuda::kSmallDMax}, w.options());
    at::Tensor lo = at::empty_like(hi);
    at::Tensor a = at::empty({rows}, w.options());
    at::Tensor sq = at::empty({rows}, w.options().dtype(at::kDouble));
    C10_CUDA_CHECK(cuda::launch_small_rows<T>(cuda::SmallRowsArgs<T>{w.data_ptr<T>(), rows, D, normalize, eps_norm,
                                                                    hi.data_ptr<T>(), lo.data_ptr<T>(),
                                                                    a.data_ptr<T>(), sq.data_ptr<double>()},
                                              stream));
    // sq: 1 / sqrt(|w|^2 + eps_norm) normalized (inf for a zero row with eps_norm = 0), |w|^2 otherwise;
    // NaN for a row with NaN or Inf
    TORCH_CHECK_VALUE(!at::isnan(sq).any().item<bool>() && (normalize || at::isfinite(sq).all().item<bool>()),
                      "w contains NaN or Inf (or a row whose squared norm overflows)");
    if (eps_norm == 0.0 && normalize) {
      TORCH_CHECK_VALUE(at::isfinite(sq).all().item<bool>(),
                        "w has a zero row (or one below 1e-300), which has no direction when eps_norm=0");
    }
    const int splits = cuda::small_splits<T>(B, n, num_sms);
    at::Tensor part_e = at::empty({splits, rows}, w.options().dtype(at::kDouble));
    at::Tensor part_a = at::empty({splits, rows, cuda::kSmallDMax}, w.options());
    at::Tensor part_k = at::empty({splits, rows}, w.options());
    const auto p = make_params<T>(kind, s, t, eps_ang, half_space, normalize);
    C10_CUDA_CHECK(cuda::launch_small_pass<T>(
        cuda::SmallPassArgs<T>{hi.data_ptr<T>(), lo.data_ptr<T>(), a.data_ptr<T>(), B, n, p, splits,
                               part_e.data_ptr<double>(), part_a.data_ptr<T>(), part_k.data_ptr<T>()},
        stream));
    at::Tensor e_row = at::empty({rows}, w.options().dtype(at::kDouble));
    at::Tensor e_diag = at::empty_like(e_row);
    const Params<double> pd{kind, s, t, eps_ang, half_space, normalize};
    C10_CUDA_CHECK(cuda::launch_small_finish<T>(
        cuda::SmallFinishArgs<T>{w.data_ptr<T>(), rows, D, splits, part_e.data_ptr<double>(), part_a.data_ptr<T>(),
                                 part_k.data_ptr<T>(), pd, eps_norm, grad_scale<double>(true, half_space) * scale,
                                 scale, grad.data_ptr<T>(), e_row.data_ptr<double>(), e_diag.data_ptr<double>()},
        stream));
    C10_CUDA_CHECK(cuda::launch_reduce_energy(e_row.data_ptr<double>(), e_diag.data_ptr<double>(), B, n,
                                              pair_scale<double>(true, half_space), scale, false,
                                              energy.data_ptr<double>(), nullptr, stream));
  });
  return {energy.to(dt), grad.to(w_in.scalar_type())};
}

}  // namespace hsu
