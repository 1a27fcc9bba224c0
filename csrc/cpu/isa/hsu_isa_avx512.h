// Included first by the avx512 copies of the CPU kernels (csrc/cpu/isa/*_avx512.cpp): their namespace
// (csrc/hsu_isa.h) and AVX-512 F/BW/CD/DQ/VL (x86-64-v4)
// for every function compiled after this point, headers included.
// csrc/cpu/hsu_cpu_dispatch.cpp runs this copy only on a CPU that has these instructions.
#if !defined(__GNUC__) || defined(__clang__)
#error "the per-instruction-set copies need GCC's #pragma GCC target; build with HSU_CPU_ARCH=native instead"
#endif
#define HSU_ISA_NS avx512
// ATen's Vectorized (csrc/cpu/hsu_cpu_small.cpp) picks its implementation from this macro, as in torch's own
// per-ISA files.
#define CPU_CAPABILITY_AVX512 1
// HSU_AVX512_WIDE (setup.py, HSU_AVX512_WIDE=1): 512-bit vectors in loops too; GCC's default tuning for
// these targets vectorizes loops with 256-bit vectors
#ifdef HSU_AVX512_WIDE
#pragma GCC target("arch=x86-64-v4", "prefer-vector-width=512")
#else
#pragma GCC target("arch=x86-64-v4")
#endif
#include "hsu_isa_macros_v3.h"
// and those x86-64-v4 adds
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512CD__ 1
#define __AVX512DQ__ 1
#define __AVX512VL__ 1
