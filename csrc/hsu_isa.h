// The CPU kernels are compiled once per instruction set (csrc/cpu/hsu_cpu_dispatch.cpp picks one at run time):
// setup.py compiles every kernel file of csrc/cpu/ (hsu_cpu.cpp, hsu_cpu_self.cpp, hsu_cpu_logsum.cpp,
// hsu_cpu_cross.cpp, hsu_cpu_small.cpp) again in small files (csrc/cpu/isa/) that define HSU_ISA_NS (avx2,
// avx512) and turn on that instruction set with `#pragma GCC target` before anything is included. Everything
// the project defines in namespace hsu then lives in the inline namespace hsu::HSU_ISA_NS, so no function of
// ours compiled for AVX-512 can share a symbol with (and be picked by the linker in place of) its copy for an
// older CPU. The baseline build, the CUDA sources and the host tests define no HSU_ISA_NS: their symbols stay
// in hsu:: itself.
//
// (Header-only functions of torch and the standard library compiled in the ISA files are still emitted once
// per file under one name; the linker keeps the first copy, and setup.py links the baseline objects first, so a
// shared copy is always the baseline one.)
#pragma once

#ifdef HSU_ISA_NS
#define HSU_ISA_BEGIN inline namespace HSU_ISA_NS {
#define HSU_ISA_END }
#else
#define HSU_ISA_BEGIN
#define HSU_ISA_END
#endif
