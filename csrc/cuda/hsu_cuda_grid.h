// Grid sizes of the CUDA launches, checked against CUDA's limits (host code, no CUDA or torch needed, so
// csrc/tests/test_cuda_grid.cpp tests it on any machine).
//
// Every launch of the ops puts its blocks on the grid's x axis (at most 2^31 - 1 blocks; y and z allow only
// 65,535): the pair pass B * ceil(n1 / rows_per_block) blocks, the row kernels ceil(B * n / threads), the
// energy reduction B. A count over the limit must never be cast to unsigned and wrap into a smaller grid
// (a silently partial result): the op computes a large batch in slices that fit (batch_per_launch), and
// grid_x turns anything still over the limit into an invalid configuration that the launch reports.
#pragma once

#include <cstdint>

namespace hsu {
namespace cuda {

constexpr int64_t kMaxGridX = 2147483647;  // gridDim.x limit (compute capability >= 3.0)
constexpr int64_t kMaxGridYZ = 65535;      // gridDim.y and gridDim.z limits

// `blocks` as gridDim.x, or 0 when it is out of range: a zero-sized grid fails to launch with
// cudaErrorInvalidConfiguration (reported by the caller's check) instead of wrapping.
inline unsigned grid_x(int64_t blocks) {
  return (blocks > 0 && blocks <= kMaxGridX) ? static_cast<unsigned>(blocks) : 0u;
}

// Blocks of `rows` rows, `per_block` rows each.
inline int64_t blocks_of(int64_t rows, int64_t per_block) { return (rows + per_block - 1) / per_block; }

// The most batch entries one launch may hold so that its largest grid, B * ceil(n / rows_per_block) blocks
// (the pair pass; the row kernels and the reduction need no more), fits on the x axis. `n` is the largest
// row count of the call (both sides of a cross energy). Returns 0 when not even one entry fits.
inline int64_t batch_per_launch(int64_t n, int64_t rows_per_block) {
  const int64_t per_entry = blocks_of(n > 0 ? n : 1, rows_per_block);
  return kMaxGridX / per_entry;
}

}  // namespace cuda
}  // namespace hsu
