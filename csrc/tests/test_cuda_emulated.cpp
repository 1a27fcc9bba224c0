// The CUDA kernels of csrc/cuda/hsu_cuda_kernels.cuh run on the CPU: every CUDA thread of a block is a host
// thread, __syncthreads is a barrier, __shared__ arrays are shared by the block's threads. This checks the
// kernels' logic (tiles, tails, column splits, the skipped diagonal, the row epilogue, the reduction)
// against a host loop in double on machines without a GPU. It says nothing about the device compiler
// (cuda_compile_check.cu does) or the device's float exp/log/acos (the host polynomials stand in for them).
#define HSU_CUDA_EMULATE 1

#include <barrier>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
thread_local dim3 threadIdx, blockIdx;
dim3 blockDim;
std::barrier<>* g_block_barrier = nullptr;
inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static  // one copy per kernel instantiation; blocks run one at a time
#define __align__(n) __attribute__((aligned(n)))

#include "../cuda/hsu_cuda_kernels.cuh"
#include "../hsu_pair.h"
#include "host_reference.h"

namespace {

// Runs `body` as a grid of blocks of `threads` threads, one block at a time.
void launch(unsigned gx, unsigned gy, unsigned threads, const std::function<void()>& body) {
  blockDim.x = threads;
  for (unsigned by = 0; by < gy; ++by)
    for (unsigned bx = 0; bx < gx; ++bx) {
      std::barrier<> bar(threads);
      g_block_barrier = &bar;
      std::vector<std::thread> ts;
      ts.reserve(threads);
      for (unsigned t = 0; t < threads; ++t)
        ts.emplace_back([&, t] {
          threadIdx.x = t;
          blockIdx.x = bx;
          blockIdx.y = by;
          body();
        });
      for (auto& th : ts) th.join();
    }
}

// The device pipeline of csrc/cuda/hsu_cuda.cu (prepare, pass, finish, reduce, the Gaussian kind's
// epilogue), emulated.
template <typename T>
struct EmuSide {
  std::vector<T> w, z, qt;
  std::vector<double> st, sa;
};

template <typename T>
EmuSide<T> emulated_prep(const std::vector<T>& w, int64_t rows, int64_t D, bool norm, double eps) {
  namespace hc = hsu::cuda;
  EmuSide<T> s{w, norm ? std::vector<T>(rows * D) : w, std::vector<T>(rows), std::vector<double>(rows),
               std::vector<double>(rows)};
  launch(static_cast<unsigned>((rows + 63) / 64), 1, 64, [&] {
    hc::row_prep_kernel<T>(s.w.data(), rows, D, norm, eps, s.st.data(), s.sa.data(), norm ? s.z.data() : nullptr,
                           s.qt.data());
  });
  return s;
}

template <typename T>
void emulated_rows(const hsu::Params<T>& p, const hsu::Params<double>& pd, const std::vector<T>& x,
                   const std::vector<T>& y, int64_t B, int64_t n1, int64_t n2, int64_t D, double eps, bool self,
                   double scale, int splits, std::vector<double>& energy, std::vector<double>& grad) {
  namespace hc = hsu::cuda;
  const bool lse = p.kind == hsu::kGaussian;
  const double cs = lse ? 1.0 : hsu::coef_scale(scale);
  const EmuSide<T> X = emulated_prep(x, B * n1, D, p.normalize, eps);
  const EmuSide<T> Y = self ? X : emulated_prep(y, B * n2, D, p.normalize, eps);
  std::vector<double> part_e(splits * B * n1, NAN), part_r(splits * B * n1, NAN), part_m(splits * B * n1, NAN);
  std::vector<T> part_a(splits * B * n1 * D, T(NAN));
  const bool norm = p.normalize;
  hc::PassArgs<T> a{X.z.data(), Y.z.data(), X.w.data(), Y.w.data(), X.st.data(), norm ? X.sa.data() : nullptr,
                    Y.st.data(), norm ? Y.sa.data() : nullptr, norm ? nullptr : X.qt.data(),
                    norm ? nullptr : Y.qt.data(), B, n1, n2, D, self, p, pd, static_cast<T>(cs), splits,
                    part_e.data(), part_a.data(), part_r.data(), lse ? part_m.data() : nullptr};
  const unsigned gx = static_cast<unsigned>(B * ((n1 + hc::kBlock - 1) / hc::kBlock));
  const int width = hc::small_width<T>(D);
  const int mode = hc::exponent_mode(p);
  std::function<void()> body;
  auto small = [&](auto kind_tag) {
    constexpr int64_t K = decltype(kind_tag)::value;
    if (width == 4) body = [&] { hc::pair_pass_small<T, K, 4>(a, mode); };
    else if (width == 16) body = [&] { hc::pair_pass_small<T, K, 16>(a, mode); };
    else if constexpr (sizeof(T) == 4) body = [&] { hc::pair_pass_small<T, K, 32>(a, mode); };
  };
  if (width == 0) body = [&] { hc::pair_pass_general<T>(a); };
  else HSU_KIND_SWITCH(p.kind, K, [&] { small(std::integral_constant<int64_t, K>{}); });
  launch(gx, static_cast<unsigned>(splits), hc::kBlock, body);

  const int64_t rows = B * n1;
  std::vector<T> g(rows * D);
  std::vector<double> e_row(rows), e_diag(rows), m_row(rows), r_row(rows), k_row(rows), lz(B);
  const bool diag = self && p.half_space;
  const double gscale = hsu::grad_scale<double>(self, p.half_space);
  hc::FinishArgs<T> f{X.w.data(), X.st.data(), norm ? X.sa.data() : nullptr, rows, D, splits, part_e.data(),
                      part_a.data(), part_r.data(), lse ? part_m.data() : nullptr, pd, gscale * scale / cs,
                      diag ? scale : 0.0, hsu::pair_scale<double>(self, p.half_space), diag, g.data(), e_row.data(),
                      e_diag.data(), lse ? m_row.data() : nullptr, lse ? r_row.data() : nullptr,
                      lse ? k_row.data() : nullptr};
  launch(static_cast<unsigned>((rows + 31) / 32), 1, 32, [&] { hc::finish_rows_kernel<T>(f); });
  energy.assign(B, 0.0);
  launch(static_cast<unsigned>(B), 1, hc::kReduceThreads, [&] {
    hc::reduce_energy_kernel(e_row.data(), diag || lse ? e_diag.data() : nullptr, n1,
                             hsu::pair_scale<double>(self, p.half_space), scale, lse, energy.data(), lz.data());
  });
  if (lse) launch(static_cast<unsigned>((rows + 31) / 32), 1, 32, [&] { hc::lse_epilogue_kernel<T>(f, n1, lz.data(), gscale); });
  grad.assign(g.begin(), g.end());
}

int g_cases = 0, g_fails = 0;

template <typename T>
void check(int64_t kind, double s, bool hs, bool norm, int64_t B, int64_t n1, int64_t n2, int64_t D, bool self,
           int splits, double tol, std::mt19937_64& rng, double scale = 1.0, int structure = 0) {
  if (self) n2 = n1;
  std::normal_distribution<double> nd;
  std::vector<T> x(B * n1 * D), y(B * n2 * D);
  // un-normalized rows of norm ~1, so that exp(-t d2) does not underflow
  const double amp = norm ? 1.0 : 1.0 / std::sqrt(static_cast<double>(D));
  for (T& v : x) v = static_cast<T>(amp * nd(rng));
  for (T& v : y) v = static_cast<T>(amp * nd(rng));
  if (self) y = x;
  if (structure == 1 && n1 >= 4) {
    // close pairs: normalized, an exact duplicate of norm 100 and an exact antipode (eps_norm keeps both
    // finite); un-normalized, copies 1e-3 apart (exact ones coincide: an infinite energy)
    const T near = norm ? T(1) : T(1.001);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t d = 0; d < D; ++d) {
        if (norm) x[(b * n1 + 0) * D + d] *= T(100);
        x[(b * n1 + 1) * D + d] = x[(b * n1 + 0) * D + d] * near;
        x[(b * n1 + 3) * D + d] = -x[(b * n1 + 2) * D + d] * near;
      }
    if (self) y = x;
  }
  const double eps = 1e-4;
  std::vector<double> e_ref, g_ref, e_dev, g_dev;
  hsu_test::host_energy_grad(hsu::Params<double>{kind, s, 2.0, 1e-4, hs, norm}, std::vector<double>(x.begin(), x.end()),
                             std::vector<double>(y.begin(), y.end()), B, n1, n2, D, eps, self, scale, e_ref, g_ref);
  emulated_rows<T>(hsu::Params<T>{kind, T(s), T(2), T(1e-4), hs, norm}, hsu::Params<double>{kind, s, 2.0, 1e-4, hs, norm},
                   x, y, B, n1, n2, D, eps, self, scale, splits, e_dev, g_dev);
  double gmax = 0.0, gerr = 0.0, eerr = 0.0;
  for (size_t k = 0; k < g_ref.size(); ++k) {
    gmax = std::fmax(gmax, std::fabs(g_ref[k]));
    gerr = std::fmax(gerr, std::fabs(g_ref[k] - g_dev[k]));
  }
  for (int64_t b = 0; b < B; ++b)
    eerr = std::fmax(eerr, std::fabs(e_ref[b] - e_dev[b]) / std::fmax(std::fabs(e_ref[b]), 1.0));
  ++g_cases;
  const bool ok = eerr <= tol && gerr <= tol * gmax;  // NaN fails both
  if (!ok) {
    ++g_fails;
    std::printf("FAIL %s kind=%lld s=%g hs=%d norm=%d B=%lld n1=%lld n2=%lld D=%lld self=%d splits=%d scale=%g "
                "structure=%d: energy rel err %.3g, grad err %.3g of %.3g\n",
                sizeof(T) == 4 ? "float" : "double", static_cast<long long>(kind), s, hs, norm,
                static_cast<long long>(B), static_cast<long long>(n1), static_cast<long long>(n2),
                static_cast<long long>(D), self, splits, scale, structure, eerr, gerr, gmax);
  }
}

template <typename T>
void check_all(double tol, std::mt19937_64& rng) {
  // D reaches every engine (small widths 4, 16, 32 and the general one with chunk tails); N the tile
  // tails (small tile 128, general tile 32); splits 1 and several, including more splits than tiles.
  const int64_t dims[] = {3, 13, 32, 45};
  for (int64_t kind = 0; kind < hsu::kNumKinds; ++kind)
    for (int norm = 1; norm >= 0; --norm) {
      if (!norm && (kind == hsu::kAngular || kind == hsu::kAngularLog)) continue;
      for (int hs = 0; hs < 2; ++hs)
        for (int64_t D : dims) {
          const double s = kind == hsu::kRiesz ? (D == 3 ? 1.0 : D == 13 ? 2.0 : 1.5) : 2.0;
          check<T>(kind, s, hs, norm, 2, 130, 0, D, true, 2, tol, rng);
          check<T>(kind, s, hs, norm, 1, 5, 0, D, true, 1, tol, rng);
          check<T>(kind, s, hs, norm, 1, 20, 200, D, false, 3, tol, rng);
        }
    }
  check<T>(hsu::kRiesz, 1.0, true, true, 1, 300, 0, 3, true, 5, tol, rng);
  check<T>(hsu::kRiesz, 1.0, true, true, 1, 70, 0, 70, true, 4, tol, rng);
  check<T>(hsu::kGaussian, 1.0, false, false, 1, 2, 0, 1, true, 1, tol, rng);
  // close pairs on the careful path (duplicates of norm 100, antipodes) in every engine, every kind, and
  // the mean's scale applied inside; the fast path would be off by orders of magnitude here
  for (int64_t kind = 0; kind < hsu::kNumKinds; ++kind)
    for (int norm = 1; norm >= 0; --norm) {
      if (!norm && (kind == hsu::kAngular || kind == hsu::kAngularLog)) continue;
      for (int hs = 0; hs < 2; ++hs)
        for (int64_t D : {3, 13, 45}) {
          check<T>(kind, 1.5, hs, norm, 2, 40, 0, D, true, 2, tol, rng, 1.0 / 780.0, 1);
          check<T>(kind, 1.5, hs, norm, 1, 9, 20, D, false, 1, tol, rng, 0.25, 1);
        }
    }
}

}  // namespace

int main() {
  std::mt19937_64 rng(7);
  check_all<double>(1e-11, rng);
  // float: the logic is the one checked in double; close pairs go through the careful path, so the
  // tolerance is float rounding of well-separated pairs and of the accumulators
  check_all<float>(5e-5, rng);
  // the exponent mode of every kind (power kinds: of power_scale * s), and an unknown kind code raises
  for (int64_t kind = 0; kind < hsu::kNumKinds; ++kind) {
    ++g_cases;
    const int want = kind == hsu::kRiesz ? hsu::kPowRecip : kind == hsu::kAngular ? hsu::kPowRecip2 : hsu::kPowGeneral;
    if (hsu::cuda::exponent_mode(hsu::Params<float>{kind, 2.0f, 2.0f, 1e-4f, false, true}) != want) {
      ++g_fails;
      std::printf("FAIL exponent_mode(kind %lld, s = 2)\n", static_cast<long long>(kind));
    }
  }
  for (int64_t kind : {hsu::kNumKinds, int64_t(-1), int64_t(1000)}) {  // codes past the table
    ++g_cases;
    try {
      hsu::cuda::exponent_mode(hsu::Params<float>{kind, 2.0f, 2.0f, 1e-4f, false, true});
      ++g_fails;
      std::printf("FAIL exponent_mode(kind %lld) returned\n", static_cast<long long>(kind));
    } catch (const std::invalid_argument&) {
    }
  }
  // the split count the launcher picks stays within its bounds
  ++g_cases;
  const int sp = hsu::cuda::choose_splits<float>(1, 4096, 4096, 3, 132);
  if (sp < 1 || sp > hsu::cuda::kMaxSplits || sp > 4096 / hsu::cuda::kSmallTile / 2) {
    ++g_fails;
    std::printf("FAIL choose_splits(4096, D=3, 132 SMs) = %d\n", sp);
  }
  std::printf("%d cases, %d failures\n", g_cases, g_fails);
  return g_fails ? 1 : 0;
}
