// torch binding of the CUDA kernels (csrc/cuda/hsu_cuda_kernels.cuh) for the CUDA dispatch key.
//
// Same ops, semantics, checks and return dtypes as csrc/cpu/hsu_cpu.cpp: inputs are computed in float64
// when they are float64 and in float32 otherwise (float16/bfloat16 are converted on entry, the gradient
// converted back on exit); the energy is returned in that compute dtype. Autograd and fake kernels are
// registered once for every dispatch key in hsu_kernels/_ext.py.
//
// The stream and device helpers come from c10/cuda (at::cuda::getCurrentCUDAStream is the same function;
// ATen/cuda/CUDAContext.h would also pull in the cuBLAS/cuSPARSE/cuSOLVER headers, which this file does
// not use).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../hsu_checks.h"
#include "../hsu_pair.h"
#include "hsu_cuda_grid.h"
#include "hsu_cuda_kernels.cuh"
#include "hsu_cuda_small.h"

namespace hsu {
namespace {

at::ScalarType compute_dtype(const at::Tensor& w) {
  return w.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Batch entries one call may launch at once for rows of length up to n (every grid on CUDA's x axis, see
// hsu_cuda_grid.h); a larger batch is computed in slices of this many entries. Errors when even one entry's
// grid would not fit.
int64_t batch_per_launch(int64_t n) {
  const int64_t per = cuda::batch_per_launch(n, cuda::kBlock);
  TORCH_CHECK_VALUE(per >= 1, "N = ", n, " rows need ", cuda::blocks_of(n, cuda::kBlock),
                    " thread blocks per matrix, over CUDA's grid limit of ", cuda::kMaxGridX);
  return per;
}

int num_sms(const at::Tensor& w) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, w.get_device()));
  return count;
}

// |w_r|^2 and the row statistic of every row; refuses NaN/Inf and (eps_norm = 0, normalized) zero rows,
// exactly as the CPU kernel does. The check reads one flag back to the host.
template <typename T>
void row_statistics(const Params<T>& p, const at::Tensor& X, T eps_norm, const char* name, at::Tensor& sq,
                    at::Tensor& st, cudaStream_t stream) {
  sq = at::empty({X.size(0), X.size(1)}, X.options());
  st = at::empty_like(sq);
  C10_CUDA_CHECK(cuda::launch_row_stats<T>(X.data_ptr<T>(), X.size(0) * X.size(1), X.size(2), p, eps_norm,
                                           sq.data_ptr<T>(), st.data_ptr<T>(), stream));
  TORCH_CHECK_VALUE(at::isfinite(sq).all().item<bool>(), name,
                    " contains NaN or Inf (or a row whose squared norm overflows)");
  if (eps_norm == T(0) && p.normalize) {
    TORCH_CHECK_VALUE(!(sq == 0).any().item<bool>(), name,
                      " has a zero row, which has no direction when eps_norm=0");
  }
}

// Per-row outputs of one pass and its epilogue: grad = dE/dw, e_row = pair sums, e_diag = self terms.
struct RowResult {
  at::Tensor grad, e_row, e_diag;
};

// Pass of the rows of X against the rows of Y, then the row epilogue.
template <typename T>
RowResult rows_against(const Params<T>& p, const at::Tensor& X, const at::Tensor& sqx, const at::Tensor& stx,
                          const at::Tensor& Y, const at::Tensor& sty, bool self, T eps_norm, T scale,
                          bool with_diag, cudaStream_t stream) {
  const int64_t B = X.size(0), n1 = X.size(1), n2 = Y.size(1), D = X.size(2);
  const int splits = cuda::choose_splits<T>(B, n1, n2, D, num_sms(X));
  at::Tensor part_e = at::empty({splits, B, n1}, X.options().dtype(at::kDouble));
  at::Tensor part_a = at::empty({splits, B, n1, D}, X.options());
  at::Tensor part_b = p.normalize ? at::Tensor() : at::empty({splits, B, n1}, X.options());
  cuda::PassArgs<T> a{X.data_ptr<T>(), stx.data_ptr<T>(), Y.data_ptr<T>(), sty.data_ptr<T>(), B, n1, n2, D,
                      self, p, splits, part_e.data_ptr<double>(), part_a.data_ptr<T>(),
                      p.normalize ? nullptr : part_b.data_ptr<T>()};
  C10_CUDA_CHECK(cuda::launch_pair_pass<T>(a, stream));

  RowResult out{at::empty_like(X), at::empty({B, n1}, X.options().dtype(at::kDouble)),
                   at::empty({B, n1}, X.options().dtype(at::kDouble))};
  cuda::FinishArgs<T> f{X.data_ptr<T>(), sqx.data_ptr<T>(), stx.data_ptr<T>(), B * n1, D, splits,
                        part_e.data_ptr<double>(), part_a.data_ptr<T>(),
                        p.normalize ? nullptr : part_b.data_ptr<T>(), p, eps_norm, scale, with_diag,
                        out.grad.data_ptr<T>(), out.e_row.data_ptr<double>(), out.e_diag.data_ptr<double>()};
  C10_CUDA_CHECK(cuda::launch_finish_rows<T>(f, stream));
  return out;
}

std::tuple<at::Tensor, at::Tensor> energy_grad_cuda(const at::Tensor& w_in, int64_t kind, double s, double t,
                                                    double eps_norm, double eps_ang, bool half_space,
                                                    bool normalize) {
  check_common(w_in, "w", kind, s, t, eps_norm, normalize);
  TORCH_CHECK_VALUE(w_in.size(1) >= 2, "w must have N >= 2 rows, got ", w_in.size(1));
  TORCH_CHECK(w_in.is_cuda(), "w must be a CUDA tensor");
  const int64_t per = batch_per_launch(w_in.size(1));
  if (w_in.size(0) > per) {  // slices whose grids fit; batch entries are independent, the result the same
    std::vector<at::Tensor> es, gs;
    for (int64_t b0 = 0; b0 < w_in.size(0); b0 += per) {
      auto [e, g] = energy_grad_cuda(w_in.narrow(0, b0, std::min(per, w_in.size(0) - b0)), kind, s, t, eps_norm,
                                     eps_ang, half_space, normalize);
      es.push_back(e);
      gs.push_back(g);
    }
    return {at::cat(es), at::cat(gs)};
  }
  if (small_d_serves_cuda(w_in, kind))  // points on a circle or a low-dimensional sphere: hsu_cuda_small.cuh
    return energy_grad_small_cuda(w_in, kind, s, t, eps_norm, eps_ang, half_space, normalize);
  const c10::cuda::CUDAGuard guard(w_in.device());
  const at::Tensor w = w_in.to(compute_dtype(w_in)).contiguous();
  const int64_t B = w.size(0), n = w.size(1);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(w.get_device()).stream();
  at::Tensor energy = at::empty({B}, w.options().dtype(at::kDouble));
  at::Tensor grad;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "hsu_energy_grad_cuda", [&] {
    using T = scalar_t;
    const auto p = make_params<T>(kind, s, t, eps_ang, half_space, normalize);
    const T eps = static_cast<T>(eps_norm);
    at::Tensor sq, st;
    row_statistics(p, w, eps, "w", sq, st, stream);
    RowResult r = rows_against<T>(p, w, sq, st, w, st, true, eps, grad_scale<T>(true, half_space), half_space,
                                     stream);
    C10_CUDA_CHECK(cuda::launch_reduce_energy(r.e_row.data_ptr<double>(), r.e_diag.data_ptr<double>(), B, n,
                                              static_cast<double>(pair_scale<T>(true, half_space)),
                                              energy.data_ptr<double>(), stream));
    grad = r.grad;
  });
  return {energy.to(compute_dtype(w_in)), grad.to(w_in.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_energy_grad_cuda(const at::Tensor& x_in, const at::Tensor& y_in,
                                                                      int64_t kind, double s, double t,
                                                                      double eps_norm, double eps_ang,
                                                                      bool half_space, bool normalize) {
  check_cross(x_in, y_in, kind, s, t, eps_norm, normalize);
  TORCH_CHECK(x_in.is_cuda() && y_in.is_cuda(), "x and y must be CUDA tensors");
  TORCH_CHECK(x_in.device() == y_in.device(), "x and y must be on one device, got ", x_in.device(), " and ",
              y_in.device());
  const int64_t per = batch_per_launch(std::max(x_in.size(1), y_in.size(1)));
  if (x_in.size(0) > per) {  // slices whose grids fit (see energy_grad_cuda)
    std::vector<at::Tensor> es, gxs, gys;
    for (int64_t b0 = 0; b0 < x_in.size(0); b0 += per) {
      const int64_t len = std::min(per, x_in.size(0) - b0);
      auto [e, gx, gy] = cross_energy_grad_cuda(x_in.narrow(0, b0, len), y_in.narrow(0, b0, len), kind, s, t,
                                                eps_norm, eps_ang, half_space, normalize);
      es.push_back(e);
      gxs.push_back(gx);
      gys.push_back(gy);
    }
    return {at::cat(es), at::cat(gxs), at::cat(gys)};
  }
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto dt =
      (x_in.scalar_type() == at::kDouble || y_in.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
  const at::Tensor x = x_in.to(dt).contiguous();
  const at::Tensor y = y_in.to(dt).contiguous();
  const int64_t B = x.size(0), nx = x.size(1);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  at::Tensor energy = at::empty({B}, x.options().dtype(at::kDouble));
  at::Tensor gx, gy;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hsu_cross_energy_grad_cuda", [&] {
    using T = scalar_t;
    const auto p = make_params<T>(kind, s, t, eps_ang, half_space, normalize);
    const T eps = static_cast<T>(eps_norm);
    at::Tensor sqx, stx, sqy, sty;
    row_statistics(p, x, eps, "x", sqx, stx, stream);
    row_statistics(p, y, eps, "y", sqy, sty, stream);
    // Each side's gradient from its own pass (rows of x against y, rows of y against x): every pair is
    // seen twice, the energy is taken from the x side only.
    RowResult rx = rows_against<T>(p, x, sqx, stx, y, sty, false, eps, T(1), false, stream);
    RowResult ry = rows_against<T>(p, y, sqy, sty, x, stx, false, eps, T(1), false, stream);
    C10_CUDA_CHECK(cuda::launch_reduce_energy(rx.e_row.data_ptr<double>(), nullptr, B, nx, 1.0,
                                              energy.data_ptr<double>(), stream));
    gx = rx.grad;
    gy = ry.grad;
  });
  return {energy.to(dt), gx.to(x_in.scalar_type()), gy.to(y_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(hsu, CUDA, m) {
  m.impl("energy_grad", &energy_grad_cuda);
  m.impl("cross_energy_grad", &cross_energy_grad_cuda);
}

}  // namespace hsu
