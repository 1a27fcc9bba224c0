// Autocast kernels of the hsu ops, for the AutocastCPU and AutocastCUDA dispatch keys.
//
// Under torch.autocast the autocast key stays active for every ATen call made while it is set on the
// calling thread, including the products inside our kernels (at::mm on float32 tiles would run in bf16 or
// fp16 and then fail against the float32 buffers, or silently lose digits). These kernels take the
// autocast keys out of the dispatch, cast float16/bfloat16 inputs to float32 (float32 and float64 stay as
// they are) and redispatch, so the energy and gradient are always computed in float32 or float64, as
// without autocast. The casts are recorded by autograd, so gradients flow back to half inputs in their
// own dtype. Returned dtypes are those of the ops without autocast: E in float32 (float64 for float64
// inputs), gradients in the dtype the op received (float32 for half inputs under autocast).
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

namespace hsu {
namespace {

// float32 for half inputs; float32 and float64 inputs unchanged.
at::Tensor to_compute_dtype(const at::Tensor& t) {
  const auto st = t.scalar_type();
  return (st == at::kHalf || st == at::kBFloat16) ? t.to(at::kFloat) : t;
}

template <c10::DeviceType DEVICE>
std::tuple<at::Tensor, at::Tensor> energy_grad_autocast(const at::Tensor& w, int64_t kind, double s, double t,
                                                        double eps_norm, double eps_ang, bool half_space,
                                                        bool normalize, double scale) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKeySet(at::autocast::get_autocast_dispatch_key_from_device_type(DEVICE)));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hsu::energy_grad", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, double, double, double,
                                                                 double, bool, bool, double)>();
  return op.call(to_compute_dtype(w), kind, s, t, eps_norm, eps_ang, half_space, normalize, scale);
}

template <c10::DeviceType DEVICE>
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_energy_grad_autocast(const at::Tensor& x, const at::Tensor& y,
                                                                          int64_t kind, double s, double t,
                                                                          double eps_norm, double eps_ang,
                                                                          bool half_space, bool normalize,
                                                                          double scale) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKeySet(at::autocast::get_autocast_dispatch_key_from_device_type(DEVICE)));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hsu::cross_energy_grad", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, int64_t, double, double, double, double, bool, bool,
                           double)>();
  return op.call(to_compute_dtype(x), to_compute_dtype(y), kind, s, t, eps_norm, eps_ang, half_space, normalize,
                 scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(hsu, AutocastCPU, m) {
  m.impl("energy_grad", &energy_grad_autocast<c10::DeviceType::CPU>);
  m.impl("cross_energy_grad", &cross_energy_grad_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(hsu, AutocastCUDA, m) {
  m.impl("energy_grad", &energy_grad_autocast<c10::DeviceType::CUDA>);
  m.impl("cross_energy_grad", &cross_energy_grad_autocast<c10::DeviceType::CUDA>);
}

}  // namespace hsu
