// The energy kinds on the C++ side, host and device: their codes, names and traits (HSU_KINDS, one row per
// kind), and the one dispatch from a run-time kind code to a compile-time one (HSU_KIND_SWITCH). The Python
// table is hsu_kernels/kinds.py (KIND_TABLE); the extension exports this one as hsu_kernels._C._kind_codes(),
// and tests/test_kinds_cpp.py checks that the two agree.
//
// Adding a kind on the C++ side: a row in HSU_KINDS below, and its phi and phi' in csrc/hsu_pair.h (a distance
// kind: phi_d2_k and phi_g_om_q's distance branch; an angle kind: the angle branches of phi_g_om_k and
// phi_g_om_q). Every run-time dispatch on the kind (the argument checks, the CPU, small-D and CUDA kernels)
// goes through HSU_KIND_SWITCH or the traits, so nothing else changes; a kind without its formula does not
// compile (the formula chains end in a static_assert). The host tests hold their own copy to check against:
// the expected table in csrc/tests/test_kinds.cpp and the closed forms in csrc/tests/test_pair_header.cpp
// (which stops, naming the kind, where one is missing). A second log-sum kind would also need its own log
// terms (hsu_pair.h's gauss_logs and what follows it are the Gaussian kind's; a static_assert there says so).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

// Inside the extension (torch's cpp_extension defines TORCH_EXTENSION_NAME for every C++ and CUDA source) an
// unknown kind raises torch's ValueError; without torch (the CMake host tests and compile check) it throws
// std::invalid_argument.
#ifdef TORCH_EXTENSION_NAME
#include <c10/util/Exception.h>
#endif

#include "hsu_isa.h"

#if defined(__CUDACC__) || defined(__HIPCC__)
#define HSU_HD __host__ __device__ __forceinline__
#else
#define HSU_HD inline
#endif

// X(id, code, name, angle, power, power_scale, logsum), one row per kind, codes 0, 1, ... in order:
//   angle        phi is a function of the angle of two normalized rows (x = theta/pi + eps_ang; the kind needs
//                normalize=True); otherwise of their squared distance d2
//   power        s is an exponent (s > 0), and the kernels specialize x^(-p) for p = power_scale * s in
//                {1/2, 1, 2} (PowMode, hsu_pair.h)
//   power_scale  see power (Riesz: d2^(-s/2))
//   logsum       the energy is reduced as a log-sum-exp, log(scale * sum phi) (docs/spec.md §4)
#define HSU_KINDS(X)                                                                         \
  X(kRiesz, 0, "riesz", false, true, 0.5, false)            /* d2^(-s/2) */              \
  X(kLog, 1, "log", false, false, 0.0, false)               /* -log(d2) */               \
  X(kAngular, 2, "angular", true, true, 1.0, false)         /* (theta/pi + eps)^(-s) */  \
  X(kAngularLog, 3, "angular_log", true, false, 0.0, false) /* -log(theta/pi + eps) */   \
  X(kGaussian, 4, "gaussian", false, false, 0.0, true)      /* exp(-t d2) */

namespace hsu {
HSU_ISA_BEGIN

// Kind codes: the Python side (hsu_kernels/kinds.py) uses the same numbers.
enum Kind : int64_t {
#define HSU_KIND_ENUM_(id, code, ...) id = code,
  HSU_KINDS(HSU_KIND_ENUM_)
#undef HSU_KIND_ENUM_
};

#define HSU_KIND_COUNT_(...) +1
constexpr int64_t kNumKinds = 0 HSU_KINDS(HSU_KIND_COUNT_);
#undef HSU_KIND_COUNT_

// The codes are 0, 1, ..., kNumKinds - 1 in the order of HSU_KINDS (the name table is indexed by code).
#define HSU_KIND_CODE_(id, code, ...) code,
constexpr int64_t kKindCodes[] = {HSU_KINDS(HSU_KIND_CODE_)};
#undef HSU_KIND_CODE_
constexpr bool kind_codes_in_order() {
  for (int64_t k = 0; k < kNumKinds; ++k)
    if (kKindCodes[k] != k) return false;
  return true;
}
static_assert(kind_codes_in_order(), "HSU_KINDS: the codes must be 0, 1, 2, ... in order");

// The kinds' names (the kind= strings of the Python API), by code.
#define HSU_KIND_NAME_(id, code, name, ...) name,
constexpr const char* kKindNames[] = {HSU_KINDS(HSU_KIND_NAME_)};
#undef HSU_KIND_NAME_

constexpr bool kind_known(int64_t kind) { return kind >= 0 && kind < kNumKinds; }

// The traits of kind KIND at compile time (see HSU_KINDS). An unknown KIND does not compile.
template <int64_t KIND>
inline constexpr bool kNoSuchKind = false;
template <int64_t KIND>
struct KindTraits {
  static_assert(kNoSuchKind<KIND>, "KindTraits: no such kind (csrc/hsu_kinds.h, HSU_KINDS)");
};
#define HSU_KIND_TRAITS_(id, code, nm, ang, pw, ps, ls) \
  template <>                                           \
  struct KindTraits<id> {                               \
    static constexpr const char* name = nm;             \
    static constexpr bool angle = ang;                  \
    static constexpr bool power = pw;                   \
    static constexpr double power_scale = ps;           \
    static constexpr bool logsum = ls;                  \
  };
HSU_KINDS(HSU_KIND_TRAITS_)
#undef HSU_KIND_TRAITS_

// ---------------------------------------------------------------------------------------------------------
// Errors. Every run-time dispatch on the kind ends in one of these: an unknown code, or a known kind where a
// function cannot serve it (an angle kind without normalize=True, a log-sum kind on a pair-sum path). The op
// entry points check the code first (hsu_checks.h, check_common), so inside the kernels they are never reached.

inline std::string known_kinds() {
  std::string s;
  for (int64_t k = 0; k < kNumKinds; ++k)
    s += (k ? ", " : "") + std::string(kKindNames[k]) + " " + std::to_string(k);
  return s;
}

// "unknown kind code 5 (known: riesz 0, log 1, ...)"
inline std::string unknown_kind_message(int64_t kind) {
  return "unknown kind code " + std::to_string(kind) + " (known: " + known_kinds() + ")";
}

[[noreturn]] __attribute__((noinline, cold)) inline void kind_error_host(int64_t kind, const char* what) {
  const std::string msg = what == nullptr ? unknown_kind_message(kind)
                                          : std::string(what) + " (kind " + std::string(kKindNames[kind]) + ")";
#ifdef TORCH_EXTENSION_NAME
  TORCH_CHECK_VALUE(false, msg);
#else
  throw std::invalid_argument(msg);
#endif
}

// what == nullptr: an unknown code; else what went wrong with the known kind `kind`. On a GPU a trap (the
// launch fails; the host checked the code before launching). Never returns; R lets a function returning R
// write `return kind_error<R>(...)`.
template <typename R = void>
[[noreturn]] HSU_HD R kind_error(int64_t kind, const char* what = nullptr) {
#if defined(__CUDA_ARCH__)
  (void)kind;
  (void)what;
  __trap();
  __builtin_unreachable();
#else
  kind_error_host(kind, kind_known(kind) ? what : nullptr);
#endif
}

// ---------------------------------------------------------------------------------------------------------
// The dispatch: HSU_KIND_SWITCH(kind, KIND, [&] { ... KIND ... }) calls the lambda with KIND a constexpr
// int64_t equal to the run-time code `kind` (so KIND can be a template argument) and returns what it returns;
// an unknown code raises (kind_error). Host and device.
template <int64_t KIND>
struct KindTag {
  static constexpr int64_t value = KIND;
};

// (nvcc: f may be a host lambda, called from this host-and-device template in host code only)
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename F>
HSU_HD decltype(auto) kind_switch(int64_t kind, F&& f) {
  switch (kind) {
#define HSU_KIND_CASE_(id, ...) \
  case id:                      \
    return f(KindTag<id>{});
    HSU_KINDS(HSU_KIND_CASE_)
#undef HSU_KIND_CASE_
    default:
      kind_error(kind);
  }
}

#define HSU_KIND_SWITCH(kind, KIND, ...)                           \
  ::hsu::kind_switch((kind), [&](auto hsu_kind_tag_) {             \
    constexpr int64_t KIND = decltype(hsu_kind_tag_)::value;       \
    return __VA_ARGS__();                                          \
  })

// The traits at run time; an unknown code raises.
struct KindInfo {
  bool angle, power;
  double power_scale;
  bool logsum;
};

HSU_HD KindInfo kind_info(int64_t kind) {
  return HSU_KIND_SWITCH(kind, KIND, [&] {
    using K = KindTraits<KIND>;
    return KindInfo{K::angle, K::power, K::power_scale, K::logsum};
  });
}

// The name of a kind code (host); an unknown code raises.
inline const char* kind_name(int64_t kind) {
  if (!kind_known(kind)) kind_error(kind);
  return kKindNames[kind];
}

HSU_ISA_END
}  // namespace hsu
