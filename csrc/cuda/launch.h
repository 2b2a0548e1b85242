// Host launchers of the CUDA row-statistics kernels.
//
// Torch-free: raw pointers, sizes and strides in (cringe/params.h), a
// cudaStream_t, a cudaError_t out. Nothing is allocated; the forward's top-k
// lists live in shared memory. Only cuda_runtime_api.h is needed to call
// these, so the pybind11 binding compiles with the host compiler.
#pragma once

#include <cuda_runtime_api.h>

#include "cringe/params.h"

namespace cringe {
namespace cuda {

// Largest k_eff = min(k, V - 1) the forward kernel handles (shared memory
// holds one sorted list of k_eff candidates per thread). Larger k returns
// cudaErrorInvalidValue; the Python backend then samples another way.
constexpr int kMaxK = 64;

// Largest V: columns are int32 inside a row (offsets of rows are int64).
constexpr int64_t kMaxV = 2147483647 - 1;

// How the forward decides that a 16-byte pack cannot hold a top-k candidate.
// kThread: against the thread's own list (its k-th key). kWarp: also
// against the best full-list threshold among the warp's active lanes (a
// full list's k-th key is a lower bound for the whole row's top-k), which
// cuts the insertions a row makes from ~threads * k(1 + ln(V/(threads*k)))
// toward k(1 + ln(V/k)). Same result either way; kWarp awaits its first GPU
// measurement (benchmarks/PERF_NOTES.md) before it becomes the default.
enum class ForwardGate : int { kThread = 0, kWarp = 1 };

cudaError_t launch_forward(const ForwardParams& p, cudaStream_t stream, ForwardGate gate = ForwardGate::kThread);
cudaError_t launch_backward(const BackwardParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace cringe
