// Portability macros for code shared by the CPU (g++) and CUDA (nvcc) kernels.
//
// Everything under csrc/include/cringe is torch-free and allocation-free, so
// the same per-row math compiles into both the OpenMP CPU kernel and the
// CUDA kernels and is therefore tested on every CPU-only CI run.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define CRINGE_HD __host__ __device__ __forceinline__
#else
#define CRINGE_HD inline
#endif

namespace cringe {

// Logit storage types understood by every kernel. The numbering is part of
// the binding ABI (the Python side passes it as an int).
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

}  // namespace cringe
