// Host test of csrc/cuda/hsu_cuda_grid.h (no CUDA, no torch): run by ctest (CMakeLists.txt).
//
// The launch grids of the CUDA ops never wrap: grid_x maps counts over CUDA's x limit (or <= 0) to 0, an
// invalid configuration the launch reports; batch_per_launch slices a batch so that the pair pass's
// B * ceil(n / 128) blocks fit, and says 0 when even one matrix cannot.
#include <cstdint>
#include <cstdio>

#include "../cuda/hsu_cuda_grid.h"

namespace {

int g_failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    ++g_failures;
    std::printf("FAIL %s\n", what);
  }
}

}  // namespace

int main() {
  using namespace hsu::cuda;
  expect(grid_x(1) == 1u, "grid_x(1)");
  expect(grid_x(kMaxGridX) == 2147483647u, "grid_x at the limit");
  expect(grid_x(kMaxGridX + 1) == 0u, "grid_x one over the limit is an invalid grid, not a wrapped one");
  expect(grid_x(int64_t{1} << 32) == 0u, "grid_x(2^32) does not wrap to 0 blocks' worth of a valid grid");
  expect(grid_x((int64_t{1} << 32) + 5) == 0u, "grid_x(2^32 + 5) does not wrap to 5");
  expect(grid_x(0) == 0u && grid_x(-3) == 0u, "grid_x of a non-positive count");

  expect(blocks_of(1, 128) == 1 && blocks_of(128, 128) == 1 && blocks_of(129, 128) == 2, "blocks_of");

  // B = 70,000 matrices of 2 rows: one block each, far under the x limit (y/z's 65,535 is not involved).
  expect(batch_per_launch(2, 128) == kMaxGridX, "batch_per_launch(2)");
  expect(70000 <= batch_per_launch(2, 128), "B = 70,000 in one launch");
  // N = 4096 rows: 32 blocks per matrix.
  const int64_t per = batch_per_launch(4096, 128);
  expect(per == kMaxGridX / 32, "batch_per_launch(4096)");
  expect(per * blocks_of(4096, 128) <= kMaxGridX && (per + 1) * blocks_of(4096, 128) > kMaxGridX,
         "batch_per_launch is the largest batch that fits");
  // A matrix whose own grid exceeds the limit: no batch fits.
  expect(batch_per_launch(kMaxGridX * int64_t{128} + 1, 128) == 0, "one matrix over the limit");
  expect(batch_per_launch(kMaxGridX * int64_t{128}, 128) == 1, "one matrix exactly at the limit");
  expect(batch_per_launch(0, 128) == kMaxGridX, "n = 0");

  if (g_failures) {
    std::printf("%d failures\n", g_failures);
    return 1;
  }
  std::printf("cuda grid: all checks passed\n");
  return 0;
}
