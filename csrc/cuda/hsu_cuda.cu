// torch binding of the CUDA kernels (csrc/cuda/hsu_cuda_kernels.cuh) for the CUDA dispatch key.
//
// Same ops, semantics, checks and return dtypes as the CPU kernel (csrc/cpu/hsu_cpu.cpp): inputs are computed in float64
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

// The prepared rows of one side (csrc/cuda/hsu_cuda_kernels.cuh, row_prep_kernel): double statistics (r and
// a normalized, |w|^2 otherwise), the rows the passes multiply, |w|^2 in T. Refuses NaN/Inf and, normalized
// with eps_norm = 0, rows without a direction, exactly as the CPU kernel does (one flag read back each).
template <typename T>
struct Prepared {
  at::Tensor w, st, sa, z, qt;
};

template <typename T>
Prepared<T> prepare(const at::Tensor& X, bool normalize, double eps_norm, const char* name, cudaStream_t stream) {
  TORCH_CHECK_VALUE(at::isfinite(X).all().item<bool>(), name, " contains NaN or Inf");
  const at::TensorOptions dopt = X.options().dtype(at::kDouble);
  Prepared<T> P{X, at::empty({X.size(0), X.size(1)}, dopt), normalize ? at::empty({X.size(0), X.size(1)}, dopt) : at::Tensor(),
                normalize ? at::empty_like(X) : X, normalize ? at::Tensor() : at::empty({X.size(0), X.size(1)}, X.options())};
  C10_CUDA_CHECK(cuda::launch_row_prep<T>(X.data_ptr<T>(), X.size(0) * X.size(1), X.size(2), normalize, eps_norm,
                                          P.st.template data_ptr<double>(), normalize ? P.sa.template data_ptr<double>() : nullptr,
                                          normalize ? P.z.template data_ptr<T>() : nullptr,
                                          normalize ? nullptr : P.qt.template data_ptr<T>(), stream));
  if (normalize && eps_norm == 0.0) {
    TORCH_CHECK_VALUE(!(P.st == 0.0).logical_or(P.st.isinf()).any().template item<bool>(), name,
                      " has a zero row (or one below 1e-300), which has no direction when eps_norm=0");
  }
  return P;
}

// Per-row outputs of one pass and its epilogue (see FinishArgs).
struct RowResult {
  at::Tensor grad, e_row, e_diag, m_row, r_row, k_row;
};

// Pass of the rows of X against the rows of Y, then the row epilogue (the Gaussian kind: its first half;
// lse_epilogue finishes it once log Z is known).
template <typename T>
std::pair<RowResult, cuda::FinishArgs<T>> rows_against(const Params<T>& p, const Params<double>& pd, double cs,
                                                       const Prepared<T>& X, const Prepared<T>& Y, bool self,
                                                       double gs, double kscale, bool with_diag, cudaStream_t stream) {
  const int64_t B = X.w.size(0), n1 = X.w.size(1), n2 = Y.w.size(1), D = X.w.size(2);
  const bool lse = kind_info(p.kind).logsum;
  const int splits = cuda::choose_splits<T>(B, n1, n2, D, num_sms(X.w));
  const at::TensorOptions dopt = X.w.options().dtype(at::kDouble);
  at::Tensor part_e = at::empty({splits, B, n1}, dopt);
  at::Tensor part_a = at::empty({splits, B, n1, D}, X.w.options());
  at::Tensor part_r = at::empty({splits, B, n1}, dopt);
  at::Tensor part_m = lse ? at::empty({splits, B, n1}, dopt) : at::Tensor();
  const bool norm = p.normalize;
  cuda::PassArgs<T> a{X.z.template data_ptr<T>(), Y.z.template data_ptr<T>(), X.w.template data_ptr<T>(), Y.w.template data_ptr<T>(),
                      X.st.template data_ptr<double>(), norm ? X.sa.template data_ptr<double>() : nullptr, Y.st.template data_ptr<double>(),
                      norm ? Y.sa.template data_ptr<double>() : nullptr, norm ? nullptr : X.qt.template data_ptr<T>(),
                      norm ? nullptr : Y.qt.template data_ptr<T>(), B, n1, n2, D, self, p, pd, static_cast<T>(cs), splits,
                      part_e.template data_ptr<double>(), part_a.template data_ptr<T>(), part_r.template data_ptr<double>(),
                      lse ? part_m.template data_ptr<double>() : nullptr};
  C10_CUDA_CHECK(cuda::launch_pair_pass<T>(a, stream));

  RowResult out{at::empty_like(X.w), at::empty({B, n1}, dopt), at::empty({B, n1}, dopt),
                lse ? at::empty({B, n1}, dopt) : at::Tensor(), lse ? at::empty({B, n1}, dopt) : at::Tensor(),
                lse ? at::empty({B, n1}, dopt) : at::Tensor()};
  cuda::FinishArgs<T> f{X.w.template data_ptr<T>(), X.st.template data_ptr<double>(), norm ? X.sa.template data_ptr<double>() : nullptr,
                        B * n1, D, splits, part_e.template data_ptr<double>(), part_a.template data_ptr<T>(),
                        part_r.template data_ptr<double>(), lse ? part_m.template data_ptr<double>() : nullptr, pd, gs, kscale,
                        pair_scale<double>(self, p.half_space), with_diag, out.grad.template data_ptr<T>(),
                        out.e_row.template data_ptr<double>(), out.e_diag.template data_ptr<double>(),
                        lse ? out.m_row.template data_ptr<double>() : nullptr, lse ? out.r_row.template data_ptr<double>() : nullptr,
                        lse ? out.k_row.template data_ptr<double>() : nullptr};
  C10_CUDA_CHECK(cuda::launch_finish_rows<T>(f, stream));
  return {out, f};
}

std::tuple<at::Tensor, at::Tensor> energy_grad_cuda(const at::Tensor& w_in, int64_t kind, double s, double t,
                                                    double eps_norm, double eps_ang, bool half_space,
                                                    bool normalize, double scale) {
  check_common(w_in, "w", kind, s, t, eps_norm, eps_ang, normalize, scale);
  TORCH_CHECK_VALUE(w_in.size(1) >= 2, "w must have N >= 2 rows, got ", w_in.size(1));
  TORCH_CHECK(w_in.is_cuda(), "w must be a CUDA tensor");
  const int64_t per = batch_per_launch(w_in.size(1));
  if (w_in.size(0) > per) {  // slices whose grids fit; batch entries are independent, the result the same
    std::vector<at::Tensor> es, gs;
    for (int64_t b0 = 0; b0 < w_in.size(0); b0 += per) {
      auto [e, g] = energy_grad_cuda(w_in.narrow(0, b0, std::min(per, w_in.size(0) - b0)), kind, s, t, eps_norm,
                                     eps_ang, half_space, normalize, scale);
      es.push_back(e);
      gs.push_back(g);
    }
    return {at::cat(es), at::cat(gs)};
  }
  const c10::cuda::CUDAGuard guard(w_in.device());
  if (raw_rows_need_double(w_in, normalize, kind, t)) {  // float rows whose squared distances overflow float
    auto [e, g] = energy_grad_cuda(w_in.to(at::kDouble), kind, s, t, eps_norm, eps_ang, half_space, normalize,
                                   scale);
    return {e.to(compute_dtype(w_in)), g.to(w_in.scalar_type())};
  }
  const at::Tensor w = w_in.to(compute_dtype(w_in)).contiguous();
  const int64_t B = w.size(0), n = w.size(1);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(w.get_device()).stream();
  at::Tensor energy = at::empty({B}, w.options().dtype(at::kDouble));
  at::Tensor lz = at::empty({B}, w.options().dtype(at::kDouble));
  at::Tensor grad;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "hsu_energy_grad_cuda", [&] {
    using T = scalar_t;
    const auto p = make_params<T>(kind, s, t, eps_ang, half_space, normalize);
    const auto pd = make_params<double>(kind, s, t, eps_ang, half_space, normalize);
    const bool lse = kind_info(kind).logsum;
    const double cs = lse ? 1.0 : coef_scale(scale);
    const double gscale = grad_scale<double>(true, half_space);
    const Prepared<T> P = prepare<T>(w, normalize, eps_norm, "w", stream);
    auto [r, f] = rows_against<T>(p, pd, cs, P, P, true, gscale * scale / cs, scale, half_space, stream);
    C10_CUDA_CHECK(cuda::launch_reduce_energy(r.e_row.data_ptr<double>(), r.e_diag.data_ptr<double>(), B, n,
                                              pair_scale<double>(true, half_space), scale, lse,
                                              energy.data_ptr<double>(), lz.data_ptr<double>(), stream));
    if (lse) C10_CUDA_CHECK(cuda::launch_lse_epilogue<T>(f, n, lz.data_ptr<double>(), gscale, stream));
    grad = r.grad;
  });
  // float accumulators: a row's sum_j c_ij u_j can leave float while the gradient, r_i times it, fits (a
  // near duplicate of norm ~600, angular s = 9.5); the call then runs again in double (one more host sync
  // for float rows; a truly non-finite gradient comes out the same)
  if (w.scalar_type() == at::kFloat && !at::isfinite(grad).all().item<bool>()) {
    auto [e2, g2] = energy_grad_cuda(w_in.to(at::kDouble), kind, s, t, eps_norm, eps_ang, half_space, normalize,
                                     scale);
    return {e2.to(compute_dtype(w_in)), g2.to(w_in.scalar_type())};
  }
  return {energy.to(compute_dtype(w_in)), grad.to(w_in.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_energy_grad_cuda(const at::Tensor& x_in, const at::Tensor& y_in,
                                                                      int64_t kind, double s, double t,
                                                                      double eps_norm, double eps_ang,
                                                                      bool half_space, bool normalize, double scale) {
  check_cross(x_in, y_in, kind, s, t, eps_norm, eps_ang, normalize, scale);
  TORCH_CHECK(x_in.is_cuda() && y_in.is_cuda(), "x and y must be CUDA tensors");
  TORCH_CHECK(x_in.device() == y_in.device(), "x and y must be on one device, got ", x_in.device(), " and ",
              y_in.device());
  const int64_t per = batch_per_launch(std::max(x_in.size(1), y_in.size(1)));
  if (x_in.size(0) > per) {  // slices whose grids fit (see energy_grad_cuda)
    std::vector<at::Tensor> es, gxs, gys;
    for (int64_t b0 = 0; b0 < x_in.size(0); b0 += per) {
      const int64_t len = std::min(per, x_in.size(0) - b0);
      auto [e, gx, gy] = cross_energy_grad_cuda(x_in.narrow(0, b0, len), y_in.narrow(0, b0, len), kind, s, t,
                                                eps_norm, eps_ang, half_space, normalize, scale);
      es.push_back(e);
      gxs.push_back(gx);
      gys.push_back(gy);
    }
    return {at::cat(es), at::cat(gxs), at::cat(gys)};
  }
  const c10::cuda::CUDAGuard guard(x_in.device());
  const bool wide = raw_rows_need_double(x_in, normalize, kind, t) || raw_rows_need_double(y_in, normalize, kind, t);
  const auto dt = (wide || x_in.scalar_type() == at::kDouble || y_in.scalar_type() == at::kDouble) ? at::kDouble
                                                                                                     : at::kFloat;
  const auto out_dt =
      (x_in.scalar_type() == at::kDouble || y_in.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
  const at::Tensor x = x_in.to(dt).contiguous();
  const at::Tensor y = y_in.to(dt).contiguous();
  const int64_t B = x.size(0), nx = x.size(1), ny = y.size(1);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  at::Tensor energy = at::empty({B}, x.options().dtype(at::kDouble));
  at::Tensor lz = at::empty({B}, x.options().dtype(at::kDouble));
  at::Tensor gx, gy;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hsu_cross_energy_grad_cuda", [&] {
    using T = scalar_t;
    const auto p = make_params<T>(kind, s, t, eps_ang, half_space, normalize);
    const auto pd = make_params<double>(kind, s, t, eps_ang, half_space, normalize);
    const bool lse = kind_info(kind).logsum;
    const double cs = lse ? 1.0 : coef_scale(scale);
    const Prepared<T> PX = prepare<T>(x, normalize, eps_norm, "x", stream);
    const Prepared<T> PY = prepare<T>(y, normalize, eps_norm, "y", stream);
    // Each side's gradient from its own pass (rows of x against y, rows of y against x): every pair is
    // seen twice, the energy (the Gaussian kind: log Z) is taken from the x side only.
    auto [rx, fx] = rows_against<T>(p, pd, cs, PX, PY, false, scale / cs, 0.0, false, stream);
    auto [ry, fy] = rows_against<T>(p, pd, cs, PY, PX, false, scale / cs, 0.0, false, stream);
    C10_CUDA_CHECK(cuda::launch_reduce_energy(rx.e_row.data_ptr<double>(), nullptr, B, nx, 1.0, scale, lse,
                                              energy.data_ptr<double>(), lz.data_ptr<double>(), stream));
    if (lse) {
      C10_CUDA_CHECK(cuda::launch_lse_epilogue<T>(fx, nx, lz.data_ptr<double>(), 1.0, stream));
      C10_CUDA_CHECK(cuda::launch_lse_epilogue<T>(fy, ny, lz.data_ptr<double>(), 1.0, stream));
    }
    gx = rx.grad;
    gy = ry.grad;
  });
  if (x.scalar_type() == at::kFloat && !(at::isfinite(gx).all().item<bool>() && at::isfinite(gy).all().item<bool>())) {
    auto [e2, gx2, gy2] = cross_energy_grad_cuda(x_in.to(at::kDouble), y_in.to(at::kDouble), kind, s, t, eps_norm,
                                                 eps_ang, half_space, normalize, scale);  // as in energy_grad_cuda
    return {e2.to(out_dt), gx2.to(x_in.scalar_type()), gy2.to(y_in.scalar_type())};
  }
  return {energy.to(out_dt), gx.to(x_in.scalar_type()), gy.to(y_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(hsu, CUDA, m) {
  m.impl("energy_grad", &energy_grad_cuda);
  m.impl("cross_energy_grad", &cross_energy_grad_cuda);
}

}  // namespace hsu
