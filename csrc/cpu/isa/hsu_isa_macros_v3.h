// The feature macros -march=x86-64-v3 defines beyond x86-64-v2 (gcc -march=x86-64-v3 -dM -E, less the
// baseline's), included by the AVX2 and AVX-512 copies after their target pragma. In C++, GCC's target
// pragma does not define them (seen with GCC 12), and headers choose code by them: the intrinsics, Sleef's
// vector functions and ATen's Vectorized declare their wide forms only under __AVX2__ / __AVX512F__; without
// them ATen's portable vectors load through the stack (2-12x slower at D = 3, measured).
#define __AVX__ 1
#define __AVX2__ 1
#define __BMI__ 1
#define __BMI2__ 1
#define __F16C__ 1
#define __FMA__ 1
#define __LZCNT__ 1
#define __MOVBE__ 1
#define __XSAVE__ 1
