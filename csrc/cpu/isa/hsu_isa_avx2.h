// Included first by the avx2 copies of the CPU kernels (csrc/cpu/isa/*_avx2.cpp): their namespace
// (csrc/hsu_isa.h) and AVX2 + FMA (x86-64-v3) for every function compiled after this point, headers included.
// csrc/cpu/hsu_cpu_dispatch.cpp runs this copy only on a CPU that has these instructions.
#if !defined(__GNUC__) || defined(__clang__)
#error "the per-instruction-set copies need GCC's #pragma GCC target; build with HSU_CPU_ARCH=native instead"
#endif
#define HSU_ISA_NS avx2
#pragma GCC target("arch=x86-64-v3")
