// Included first by the avx2 copies of the CPU kernels (csrc/cpu/isa/*_avx2.cpp): their namespace
// (csrc/hsu_isa.h) and AVX2 + FMA (x86-64-v3)
// for every function compiled after this point, headers included.
// csrc/cpu/hsu_cpu_dispatch.cpp runs this copy only on a CPU that has these instructions.
#if !defined(__GNUC__) || defined(__clang__)
#error "the per-instruction-set copies need GCC's #pragma GCC target; build with HSU_CPU_ARCH=native instead"
#endif
#define HSU_ISA_NS avx2
// ATen's Vectorized (csrc/cpu/hsu_cpu_small.cpp) picks its implementation from this macro, as in torch's own
// per-ISA files.
#define CPU_CAPABILITY_AVX2 1
#pragma GCC target("arch=x86-64-v3")
#include "hsu_isa_macros_v3.h"
