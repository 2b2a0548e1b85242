// CUDA backward kernel: dx = g_lse * exp(x - lse) + g_t [j == y] + g_s [j == s].
//
// One block per row, or per piece of a row (launch.h, RowSplit); one read
// and one write of the row (row_grad.cuh). After a forward that wrote the
// gradient (p.lse_weight set), a row whose g_lse is the forward's guess only
// needs its target and sampled columns: two elements instead of the row
// (complete_kernel, or piece 0 of the row when rows are split).
#include <climits>

#include "common.cuh"
#include "launch.h"
#include "row_grad.cuh"

namespace cringe {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// The row's coefficients, or `zero` for an ignored row.
template <class Acc>
__device__ __forceinline__ RowGrad<Acc> row_coefficients(const BackwardParams& p, int64_t i, int V) {
  const int64_t y = p.target[i];
  RowGrad<Acc> g{Acc(0), Acc(0), Acc(0), Acc(0), -1, -1, y == p.ignore_index};
  if (!g.zero) {
    g.lse = static_cast<const Acc*>(p.lse)[i];
    g.g_lse = static_cast<const Acc*>(p.grad_lse)[i];
    g.g_t = static_cast<const Acc*>(p.grad_target)[i];
    g.g_s = static_cast<const Acc*>(p.grad_sample)[i];
    const int64_t s = p.sample_index[i];
    g.y = (y >= 0 && y < V) ? static_cast<int>(y) : -1;
    g.s = (s >= 0 && s < V) ? static_cast<int>(s) : -1;
  }
  return g;
}

// After a forward that wrote the gradient (p.lse_weight set): whether row i
// needs at most its target and sampled columns, i.e. it is ignored (the
// forward wrote its zeros) or its g_lse is the forward's guess. Otherwise
// the row must be written in full.
template <class Acc>
__device__ __forceinline__ bool guess_holds(const BackwardParams& p, int64_t i, const RowGrad<Acc>& g) {
  return g.zero || (g.y >= 0 && g.g_lse == static_cast<const Acc*>(p.lse_weight)[i]);
}

// Where guess_holds, rewrites the target and sampled columns, their sparse
// terms added and rounded once (same formula and rounding as
// write_row_grad), and returns true; else writes nothing and returns false.
template <DType D>
__device__ __forceinline__ bool complete_sparse(const BackwardParams& p, int64_t i,
                                                const RowGrad<typename Types<D>::Acc>& g) {
  using Ty = Types<D>;
  using S = typename Ty::S;
  using Acc = typename Ty::Acc;
  if (!guess_holds(p, i, g)) return false;
  if (g.zero) return true;
  const S* in = logits_row<S>(p, i);
  S* out = static_cast<S*>(p.grad) + (i / p.T) * p.grad_stride_b + (i % p.T) * p.grad_stride_t;
  const FastExp ex;
  Acc dy = g.g_lse * ex(Ty::load(in[g.y]) - g.lse) + g.g_t;
  if (g.s == g.y) dy += g.g_s;
  out[g.y] = Ty::store(dy);
  if (g.s >= 0 && g.s != g.y) out[g.s] = Ty::store(g.g_lse * ex(Ty::load(in[g.s]) - g.lse) + g.g_s);
  return true;
}

// One block per row, or per piece of a row; after a single-pass forward
// only with pieces > 1 (few rows), else complete_kernel.
template <DType D>
__global__ void __launch_bounds__(kThreads) backward_kernel(const BackwardParams p, const int pieces) {
  using Ty = Types<D>;
  using S = typename Ty::S;
  using Acc = typename Ty::Acc;
  const int V = static_cast<int>(p.V);
  const int64_t N = p.B * p.T;

  for (int64_t item = blockIdx.x; item < N * pieces; item += gridDim.x) {
    const int64_t i = item / pieces;
    const int piece = static_cast<int>(item % pieces);
    const RowGrad<Acc> g = row_coefficients<Acc>(p, i, V);
    // After a single pass: piece 0's thread 0 writes the two columns, the
    // other threads only need to know the row is done.
    if (p.lse_weight != nullptr && guess_holds(p, i, g)) {
      if (piece == 0 && threadIdx.x == 0) complete_sparse<D>(p, i, g);
      continue;
    }
    S* out = static_cast<S*>(p.grad) + (i / p.T) * p.grad_stride_b + (i % p.T) * p.grad_stride_t;
    write_row_grad<D>(logits_row<S>(p, i), out, V, g, piece, pieces);
  }
}

// Completes the single pass's gradient (p.lse_weight set, one piece a
// row): a block takes `rows` consecutive rows, one thread each, and writes
// the two columns of every row the forward's guess fits; the rows it does
// not fit (an upstream gradient other than the guess) the whole block
// then writes in full, one after another. With one block per row instead,
// the usual case of two columns a row cost ~16 waves of blocks that did
// nothing but look (49 us on an H100 at N = 16384, against a few us);
// `rows` is sized so that the grid is about one full wave either way.
template <DType D>
__global__ void __launch_bounds__(kThreads) complete_kernel(const BackwardParams p, const int rows) {
  using Ty = Types<D>;
  using S = typename Ty::S;
  using Acc = typename Ty::Acc;
  __shared__ int redo[kThreads];
  __shared__ int n_redo;
  const int V = static_cast<int>(p.V);
  const int64_t N = p.B * p.T;

  for (int64_t first = static_cast<int64_t>(blockIdx.x) * rows; first < N;
       first += static_cast<int64_t>(gridDim.x) * rows) {
    if (threadIdx.x == 0) n_redo = 0;
    __syncthreads();
    const int64_t i = first + threadIdx.x;
    if (threadIdx.x < rows && i < N && !complete_sparse<D>(p, i, row_coefficients<Acc>(p, i, V))) {
      redo[atomicAdd(&n_redo, 1)] = threadIdx.x;  // in any order: rows are independent
    }
    __syncthreads();
    const int n = n_redo;
    for (int r = 0; r < n; ++r) {
      const int64_t row = first + redo[r];
      S* out = static_cast<S*>(p.grad) + (row / p.T) * p.grad_stride_b + (row % p.T) * p.grad_stride_t;
      write_row_grad<D>(logits_row<S>(p, row), out, V, row_coefficients<Acc>(p, row, V));
    }
    __syncthreads();  // n_redo and redo are reused
  }
}

template <DType D>
cudaError_t launch(const BackwardParams& p, int pieces, cudaStream_t stream) {
  using S = typename Types<D>::S;
  const int threads = threads_for(kThreads, (p.V + Pack<S>::kN - 1) / Pack<S>::kN / pieces);
  const int64_t N = p.B * p.T;
  if (p.lse_weight != nullptr && pieces == 1) {
    DeviceLimits dev{};
    const cudaError_t err = current_device_limits(dev);
    if (err != cudaSuccess) return err;
    // About one wave of 2048 threads per SM (fewer threads for short rows,
    // the block still checks up to `threads` rows at once).
    const int64_t wave = static_cast<int64_t>(dev.sms) * (2048 / threads);
    int64_t rows = (N + wave - 1) / wave;
    if (rows > threads) rows = threads;
    const int64_t blocks = (N + rows - 1) / rows;
    const unsigned grid = static_cast<unsigned>(blocks < INT_MAX ? blocks : INT_MAX);
    CRINGE_LAUNCH(grid, threads, 0, stream, complete_kernel<D>)(p, static_cast<int>(rows));
    return cudaGetLastError();
  }
  const int64_t items = N * pieces;
  const unsigned grid = static_cast<unsigned>(items < INT_MAX ? items : INT_MAX);
  CRINGE_LAUNCH(grid, threads, 0, stream, backward_kernel<D>)(p, pieces);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_backward(const BackwardParams& p, cudaStream_t stream, int pieces) {
  if (p.B < 0 || p.T < 0 || p.V < 2 || p.V > kMaxV || pieces < 1 || pieces > kMaxPieces) {
    return cudaErrorInvalidValue;
  }
  if (p.B * p.T == 0) return cudaSuccess;
  switch (p.dtype) {
    case DType::kFloat32: return launch<DType::kFloat32>(p, pieces, stream);
    case DType::kFloat64: return launch<DType::kFloat64>(p, pieces, stream);
    case DType::kFloat16: return launch<DType::kFloat16>(p, pieces, stream);
    case DType::kBFloat16: return launch<DType::kBFloat16>(p, pieces, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace cringe
