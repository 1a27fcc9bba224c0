// csrc/cpu/hsu_cpu_logsum.cpp compiled for avx512 (see csrc/cpu/isa/hsu_isa_avx512.h and csrc/cpu/hsu_cpu_dispatch.cpp).
#include "hsu_isa_avx512.h"
#include "../hsu_cpu_logsum.cpp"
