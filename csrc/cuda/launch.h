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

// How the forward finds the top-k (the same result every way):
// kThread: each thread keeps a sorted list of its own columns' best k in
//   shared memory, gated by its own k-th key; k rounds of block argmax
//   merge the lists at the row's end.
// kWarp: kThread, with each pack also gated by the best full-list threshold
//   among the warp's active lanes (a full list's k-th key is a lower bound
//   for the whole row's top-k).
// kRow: one sorted list per row and its k-th key as the threshold of the
//   whole block; columns that reach it go to a shared buffer that one warp
//   merges once per round of kUnroll packs per thread. About k(1 + ln
//   rounds) candidates per row instead of ~threads * k * ln(V / (threads *
//   k)) (csrc/cuda/forward.cu).
// kThread is the default until a GPU measures the others
// (benchmarks/PERF_NOTES.md).
enum class ForwardGate : int { kThread = 0, kWarp = 1, kRow = 2 };

// Launch shape of the single-pass forward: threads per block (a power of
// two, 32 to 512; float64 uses at most 256) and blocks per SM (1 to 32; the
// grid is persistent). More rows in flight hide more memory latency, but
// their second read must still find them in L2. Not measured yet: the
// default is the one that surely fits L2 at the goal point.
struct SinglePassShape {
  int threads = 512;
  int blocks_per_sm = 1;
};

// With p.grad and p.lse_weight set, the forward also writes the gradient for
// d loss / d lse = lse_weight (the single-pass form: one read and one write
// of the logits in all; always the kRow strategy, `gate` is not used), and a
// backward given the same lse_weight completes it.
cudaError_t launch_forward(const ForwardParams& p, cudaStream_t stream, ForwardGate gate = ForwardGate::kThread,
                           SinglePassShape shape = SinglePassShape{});
cudaError_t launch_backward(const BackwardParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace cringe
