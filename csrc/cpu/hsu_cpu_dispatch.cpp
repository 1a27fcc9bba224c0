// The CPU kernels' registration, and the choice of the instruction set they run with.
//
// A portable build (setup.py's default on x86-64 with GCC) compiles the CPU kernels (hsu_cpu.cpp, the
// engines hsu_cpu_self.cpp, hsu_cpu_logsum.cpp and hsu_cpu_cross.cpp, and hsu_cpu_small.cpp) three times:
// for the build's baseline (x86-64-v2: SSE4.2, POPCNT), for AVX2 + FMA (x86-64-v3) and for AVX-512
// (x86-64-v4: F, BW, CD, DQ, VL), each copy in a namespace of its own (see csrc/hsu_isa.h); setup.py then
// defines HSU_CPU_DISPATCH. On the first call this file asks the CPU which of them it can run and takes the
// widest, unless the environment variable HSU_CPU_CAPABILITY names one ("default", "avx2" or "avx512"; one
// the CPU cannot run is an error, an unknown name too). A build for one CPU (HSU_CPU_ARCH=native or any
// other -march value) compiles the kernels once, and that copy always runs.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <tuple>

#include "../hsu_isa.h"

namespace hsu {

// The benchmark's switch of the close-pair check (hsu_kernels._C._set_close_pair_check), read by every copy.
std::atomic<bool> g_close_pair_check{true};

#define HSU_DECLARE_CPU_KERNELS                                                                                \
  std::tuple<at::Tensor, at::Tensor> energy_grad_cpu(const at::Tensor& w, int64_t kind, double s, double t,    \
                                                     double eps_norm, double eps_ang, bool half_space,        \
                                                     bool normalize, double scale);                            \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_energy_grad_cpu(                                        \
      const at::Tensor& x, const at::Tensor& y, int64_t kind, double s, double t, double eps_norm,           \
      double eps_ang, bool half_space, bool normalize, double scale);

HSU_DECLARE_CPU_KERNELS  // the baseline copy (or the only one): hsu::energy_grad_cpu
#ifdef HSU_CPU_DISPATCH
namespace avx2 {
HSU_DECLARE_CPU_KERNELS
}
namespace avx512 {
HSU_DECLARE_CPU_KERNELS
}
#endif
#undef HSU_DECLARE_CPU_KERNELS

namespace {

using EnergyFn = decltype(&energy_grad_cpu);
using CrossFn = decltype(&cross_energy_grad_cpu);

struct Kernels {
  const char* name;
  EnergyFn energy;
  CrossFn cross;
};

#ifdef HSU_CPU_DISPATCH
constexpr Kernels kCopies[] = {{"default", &energy_grad_cpu, &cross_energy_grad_cpu},
                               {"avx2", &avx2::energy_grad_cpu, &avx2::cross_energy_grad_cpu},
                               {"avx512", &avx512::energy_grad_cpu, &avx512::cross_energy_grad_cpu}};

// The widest copy this CPU runs: 2 (AVX-512 F/BW/CD/DQ/VL with AVX2 and FMA), 1 (AVX2 and FMA), 0.
int cpu_level() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi2");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                  __builtin_cpu_supports("avx512vl");
  return v4 ? 2 : v3 ? 1 : 0;
#else
  return 0;
#endif
}

const Kernels& choose() {
  const int level = cpu_level();
  const char* env = std::getenv("HSU_CPU_CAPABILITY");
  if (env == nullptr || *env == '\0') return kCopies[level];
  const std::string want(env);
  for (int k = 0; k < 3; ++k) {
    if (want == kCopies[k].name) {
      TORCH_CHECK_VALUE(k <= level, "HSU_CPU_CAPABILITY=", want, " asks for instructions this CPU does not have ",
                        "(it runs: ", kCopies[level].name, " and below)");
      return kCopies[k];
    }
  }
  TORCH_CHECK_VALUE(false, "HSU_CPU_CAPABILITY must be one of default, avx2, avx512 (or unset), got '", want, "'");
}
#else
#define HSU_STR2(x) #x
#define HSU_STR(x) HSU_STR2(x)
#ifdef HSU_CPU_ARCH_ID  // setup.py: the -march value of a build for one CPU
constexpr Kernels kOnly{HSU_STR(HSU_CPU_ARCH_ID), &energy_grad_cpu, &cross_energy_grad_cpu};
#else
constexpr Kernels kOnly{"compiler default", &energy_grad_cpu, &cross_energy_grad_cpu};
#endif
const Kernels& choose() { return kOnly; }
#endif

// Chosen once, on the first call (an error, such as a bad HSU_CPU_CAPABILITY, is raised again on each call).
const Kernels& kernels() {
  static const Kernels& k = choose();
  return k;
}

std::tuple<at::Tensor, at::Tensor> energy_grad_dispatch(const at::Tensor& w, int64_t kind, double s, double t,
                                                        double eps_norm, double eps_ang, bool half_space,
                                                        bool normalize, double scale) {
  return kernels().energy(w, kind, s, t, eps_norm, eps_ang, half_space, normalize, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_energy_grad_dispatch(const at::Tensor& x, const at::Tensor& y,
                                                                          int64_t kind, double s, double t,
                                                                          double eps_norm, double eps_ang,
                                                                          bool half_space, bool normalize,
                                                                          double scale) {
  return kernels().cross(x, y, kind, s, t, eps_norm, eps_ang, half_space, normalize, scale);
}

}  // namespace

// The copy the CPU kernels run with ("default", "avx2", "avx512"; the -march value, e.g. "native", in a build
// for one CPU), for
// hsu_kernels._C._cpu_capability(); raises what the first call would raise.
std::string cpu_capability() { return kernels().name; }

// The copies this build holds, widest last.
std::string cpu_capabilities_built() {
#ifdef HSU_CPU_DISPATCH
  return "default,avx2,avx512";
#else
  return kOnly.name;
#endif
}

TORCH_LIBRARY_IMPL(hsu, CPU, m) {
  m.impl("energy_grad", &energy_grad_dispatch);
  m.impl("cross_energy_grad", &cross_energy_grad_dispatch);
}

}  // namespace hsu
