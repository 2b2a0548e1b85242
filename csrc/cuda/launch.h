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
//   merges when a round overflows it or leaves it deep, and at the row's
//   end: ~3 merges and ~1,200 buffered columns per random row at V =
//   128256, k = 5, where per-thread lists insert ~7,000 times
//   (csrc/cuda/forward.cu, benchmarks/topk_work_model.py).
// kRowAsync: kRow, with each round's packs copied into shared memory by
//   cp.async while the previous round computes, so the round's barriers do
//   not drain the loads in flight (2 x 16 KB of shared memory per 256
//   threads). The single pass (ForwardParams::grad) runs the row kernel
//   whatever the gate, staged under kRowAsync.
// The Python side defaults to kRow, the fastest measured (H100, bf16,
// N=16384, V=128256, run 4: kRow 2.11 ms, kRowAsync 2.22, kWarp 5.32,
// kThread 5.69; H200, run 5: kRow 1.91, kRowAsync 2.00; benchmarks/
// PERF_NOTES.md).
enum class ForwardGate : int { kThread = 0, kWarp = 1, kRow = 2, kRowAsync = 3 };

// Launch shape of the single-pass forward: threads per block (a power of
// two, 32 to 512; float64 uses at most 256), blocks per SM (1 to 32, at
// most as many as are resident at once; the grid is persistent) and the
// bytes of shared memory per block that keep the first 16-byte packs of the
// row for the gradient sweep (0: the sweep reads the whole row again, from
// L2 while it is still there; clamped to what a block may have, to its
// share of the SM and to the row). More rows in flight hide more
// memory latency, but their second read must still find them on chip: the
// shared-memory cache keeps part of each row off L2, so more rows fit.
// Not measured yet: the default is the one that surely fits L2 at the
// goal point.
// `staged`: the single pass copies its rounds with cp.async, as the
// kRowAsync forward does, whatever the forward's gate (kRowAsync stages it
// too); staged, 4 or more blocks per SM of at most 256 threads run a build
// of the kernel limited to 64 registers, so that four are resident (32
// warps a SM instead of the 24 of 3 x 256 unlimited).
struct SinglePassShape {
  int threads = 512;
  int blocks_per_sm = 1;
  int cache_bytes = 0;
  bool staged = false;
};

// Split rows. One block per row leaves SMs idle when there are few rows (a
// short batch, evaluation): N = 64 rows fill 64 of an H100's 132 SMs, and a
// block alone keeps too few bytes in flight to reach its share of HBM
// bandwidth. With `pieces` > 1 each row is cut into that many pieces of
// consecutive 16-byte packs, one block each. The backward needs nothing
// more (a piece's gradient depends only on the row's statistics). The
// forward's pieces write their (max, sum-exp) and sorted top-k lists to
// `workspace` (forward_workspace_bytes, allocated by the caller), and a
// second kernel merges them per row into the same outputs (the lse may
// differ in the last bits, being summed in another order; the top-k and so
// the sampled column are exact either way). The forward's pieces always
// use the kRow strategy; the single pass takes pieces == 1.
constexpr int kMaxPieces = 32;  // the merge has one warp lane per piece
// A piece is at least one round of the row-threshold kernel for 16-bit
// logits (256 threads x kUnroll packs x 8): shorter pieces would spend most
// of their time on that round's merges.
constexpr int64_t kMinPieceColumns = 8192;
// Blocks per SM that row_pieces aims for: the row-threshold kernel is
// compiled to fit that many (64 registers a thread).
constexpr int kPieceBlocksPerSm = 4;

struct RowSplit {
  int pieces = 1;
  void* workspace = nullptr;  // forward, pieces > 1
};

// The policy of `CRINGE_KERNELS_CUDA_SPLIT=auto`: one block per row while
// the rows give every SM kPieceBlocksPerSm blocks; otherwise the most
// pieces that still run in one wave of kPieceBlocksPerSm blocks per SM,
// each at least kMinPieceColumns long, at most kMaxPieces. Rounding up
// instead (the first policy) started a second, mostly idle wave: on an H100
// at V = 128256, N = 256, 3 pieces took 0.119 ms against 0.097 ms for 2
// (benchmarks/results/cuda-h100-3, tune.csv).
inline int row_pieces(int64_t N, int64_t V, int sms) {
  const int64_t want = static_cast<int64_t>(sms) * kPieceBlocksPerSm;
  if (N <= 0 || N >= want) return 1;
  int64_t pieces = want / N;
  if (pieces > V / kMinPieceColumns) pieces = V / kMinPieceColumns;
  if (pieces > kMaxPieces) pieces = kMaxPieces;
  return pieces > 1 ? static_cast<int>(pieces) : 1;
}

// Byte offsets of the forward's piece workspace for `items` = N * pieces
// pieces of `acc_bytes` statistics (4: float, 8: double) and k_eff
// candidates each: max [items], sum-exp [items], top-k keys [items, k_eff]
// (sorted, padded with (-inf, INT_MAX)), their columns [items, k_eff] int32.
struct PieceLayout {
  int64_t m, s, keys, cols, total;
};
CRINGE_HD PieceLayout piece_layout(int acc_bytes, int64_t items, int64_t k_eff) {
  PieceLayout l{};
  l.m = 0;
  l.s = l.m + items * acc_bytes;
  l.keys = l.s + items * acc_bytes;
  l.cols = l.keys + items * k_eff * acc_bytes;
  l.total = l.cols + items * k_eff * static_cast<int64_t>(sizeof(int32_t));
  return l;
}

inline int acc_bytes(DType dtype) { return dtype == DType::kFloat64 ? 8 : 4; }

// Bytes of `workspace` a forward with these sizes and `pieces` needs (0 for
// one piece). k is the caller's k; the kernels keep k_eff = min(k, V - 1).
inline int64_t forward_workspace_bytes(DType dtype, int64_t N, int64_t V, int64_t k, int pieces) {
  if (pieces <= 1 || N <= 0) return 0;
  const int64_t k_eff = k < V - 1 ? k : V - 1;
  return piece_layout(acc_bytes(dtype), N * pieces, k_eff > 0 ? k_eff : 0).total;
}

// With p.grad and p.lse_weight set, the forward also writes the gradient for
// d loss / d lse = lse_weight (the single-pass form: one read and one write
// of the logits in all; always the kRow strategy, `gate` is not used), and a
// backward given the same lse_weight completes it.
cudaError_t launch_forward(const ForwardParams& p, cudaStream_t stream, ForwardGate gate = ForwardGate::kThread,
                           SinglePassShape shape = SinglePassShape{}, RowSplit split = RowSplit{});
cudaError_t launch_backward(const BackwardParams& p, cudaStream_t stream, int pieces = 1);

}  // namespace cuda
}  // namespace cringe
