// A second translation unit that includes the CUDA kernel header, linked into hsu_cuda_compile_check next to
// cuda_compile_check.cu. A kernel or function defined in a header without internal linkage, inline or template
// is defined twice when two units of one library include it (the extension compiles its CUDA sources
// separately and links them into one library); this file makes ctest's build fail the same way, so the header
// stays safe to include from a second CUDA source.
#include "../cuda/hsu_cuda_kernels.cuh"

int hsu_cuda_link_check_second_unit() { return hsu::cuda::small_width<float>(3); }
