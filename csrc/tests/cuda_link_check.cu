// A second translation unit that includes every CUDA kernel header, linked into hsu_cuda_compile_check
// next to cuda_compile_check.cu. The extension compiles hsu_cuda.cu and hsu_cuda_small.cu separately and
// links them into one library; a kernel or function defined in a header without internal linkage, inline
// or template would be defined twice there. This file makes ctest's build fail the same way.
#include "../cuda/hsu_cuda_kernels.cuh"
#include "../cuda/hsu_cuda_small.cuh"

int hsu_cuda_link_check_second_unit() { return hsu::cuda::small_width<float>(3); }
