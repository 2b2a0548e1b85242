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
// holds the row's sorted list and the merge scans it once per candidate).
// Larger k returns cudaErrorInvalidValue; the Python backend refuses it
// first, naming k.
constexpr int kMaxK = 64;

// Largest V: columns are int32 inside a row (offsets of rows are int64).
constexpr int64_t kMaxV = 2147483647 - 1;

// Launch shape of the single pass (the forward that also writes the
// gradient, ForwardParams::grad): threads per block (a power of two, 32 to
// 512; float64 uses at most 256), blocks per SM (1 to 32, at most as many
// as are resident at once; the grid is persistent), the bytes of shared
// memory per block that keep the first 16-byte packs of the row for the
// gradient sweep (0: the sweep reads the whole row again, from L2 while it
// is still there; clamped to what a block may have, to its share of the SM
// and to the row), and `staged`: each round's packs copied into shared
// memory by cp.async while the previous round computes, so that the
// round's barriers do not drain the loads in flight (2 x 16 KB per 256
// threads). More rows in flight hide more memory latency, but their second
// read must still find them on chip.
struct SinglePassShape {
  int threads;
  int blocks_per_sm;
  int cache_bytes;
  bool staged;
};

// Rows up to this many bytes take the short-row shape of single_pass_shape.
constexpr int64_t kShortRowBytes = 128 * 1024;

// The single pass's shape for rows of `row_bytes` bytes (V times the
// element size); cringe_kernels/backends/heuristics.py holds the same rule.
// Short rows: 256 threads, 3 blocks per SM, 64 KB of each row kept in
// shared memory (all of a 62.5 KB bf16 row at V = 32000), not staged;
// longer rows: 512 threads, 2 blocks per SM, no cache, staged. The fastest
// measured on an H100 (bf16, N = 16384, k = 5, forward + gradient;
// benchmarks/results/cuda-h100-6/tune.csv, cuda-h100-7/tune_v*.csv):
// V = 32000 1.12 ms against 1.21 ms for the best shape without a cache;
// V = 50257 1.73 against 1.76 ms; V = 128256 3.98 ms against 4.06 ms for
// the short-row shape.
inline SinglePassShape single_pass_shape(int64_t row_bytes) {
  if (row_bytes <= kShortRowBytes) return SinglePassShape{256, 3, 64 * 1024, false};
  return SinglePassShape{512, 2, 0, true};
}

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
// the single pass takes pieces == 1.
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

// Pieces per row for N rows of V columns on `sms` SMs
// (cringe_kernels/backends/heuristics.py holds the same rule): one block
// per row while the rows give every SM kPieceBlocksPerSm blocks; otherwise
// the most pieces that still run in one wave of kPieceBlocksPerSm blocks
// per SM, each at least kMinPieceColumns long, at most kMaxPieces. Rounding
// up would start a second, mostly idle wave: on an H100 at V = 128256,
// N = 256, 3 pieces take 0.119 ms against 0.097 ms for 2
// (benchmarks/results/cuda-h100-3/tune.csv).
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

// Bytes of one logit.
inline int64_t dtype_bytes(DType dtype) {
  return dtype == DType::kFloat64 ? 8 : dtype == DType::kFloat32 ? 4 : 2;
}

// Bytes of `workspace` a forward with these sizes and `pieces` needs (0 for
// one piece). k is the caller's k; the kernels keep k_eff = min(k, V - 1).
inline int64_t forward_workspace_bytes(DType dtype, int64_t N, int64_t V, int64_t k, int pieces) {
  if (pieces <= 1 || N <= 0) return 0;
  const int64_t k_eff = k < V - 1 ? k : V - 1;
  return piece_layout(acc_bytes(dtype), N * pieces, k_eff > 0 ? k_eff : 0).total;
}

// The forward: per row the statistics (ForwardParams). The top-k keeps one
// sorted list per row and its k-th key as the threshold of the whole block
// (forward.cu); `split` cuts rows into pieces. With p.grad and p.lse_weight
// set it is the single pass: it also writes the gradient for d loss / d lse
// = lse_weight (one read and one write of the logits in all) with
// single_pass_shape of the row's bytes (`split` must be one piece), and a
// backward given the same lse_weight completes it.
cudaError_t launch_forward(const ForwardParams& p, cudaStream_t stream, RowSplit split = RowSplit{});

// The single pass (p.grad and p.lse_weight set) with the launch shape given.
cudaError_t launch_single_pass(const ForwardParams& p, cudaStream_t stream, SinglePassShape shape);

cudaError_t launch_backward(const BackwardParams& p, cudaStream_t stream, int pieces = 1);

}  // namespace cuda
}  // namespace cringe
