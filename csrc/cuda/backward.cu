// CUDA backward kernel: dx = g_lse * exp(x - lse) + g_t [j == y] + g_s [j == s].
//
// One block per row, or per piece of a row (launch.h, RowSplit); one read
// and one write of the row (row_grad.cuh). After a forward that wrote the
// gradient (p.lse_weight set), a row whose g_lse is the forward's guess only
// needs its target and sampled columns: two elements instead of the row,
// written by its piece 0.
#include <climits>

#include "common.cuh"
#include "launch.h"
#include "row_grad.cuh"

namespace cringe {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <DType D>
__global__ void __launch_bounds__(kThreads) backward_kernel(const BackwardParams p, const int pieces) {
  using Ty = Types<D>;
  using S = typename Ty::S;
  using Acc = typename Ty::Acc;
  const int V = static_cast<int>(p.V);
  const int64_t N = p.B * p.T;
  const Acc* lse_weight = static_cast<const Acc*>(p.lse_weight);

  for (int64_t item = blockIdx.x; item < N * pieces; item += gridDim.x) {
    const int64_t i = item / pieces;
    const int piece = static_cast<int>(item % pieces);
    const int64_t b = i / p.T, t = i % p.T;
    const S* in = logits_row<S>(p, i);
    S* out = static_cast<S*>(p.grad) + b * p.grad_stride_b + t * p.grad_stride_t;
    const int64_t y = p.target[i];
    RowGrad<Acc> g{Acc(0), Acc(0), Acc(0), Acc(0), -1, -1, y == p.ignore_index};
    if (g.zero && lse_weight != nullptr) continue;  // the forward wrote the zeros
    if (!g.zero) {
      g.lse = static_cast<const Acc*>(p.lse)[i];
      g.g_lse = static_cast<const Acc*>(p.grad_lse)[i];
      g.g_t = static_cast<const Acc*>(p.grad_target)[i];
      g.g_s = static_cast<const Acc*>(p.grad_sample)[i];
      const int64_t s = p.sample_index[i];
      g.y = (y >= 0 && y < V) ? static_cast<int>(y) : -1;
      g.s = (s >= 0 && s < V) ? static_cast<int>(s) : -1;
      // The forward wrote g_lse * exp(x - lse) everywhere (same formula,
      // same rounding): add the two sparse terms, each rounded once.
      if (lse_weight != nullptr && g.y >= 0 && g.g_lse == lse_weight[i]) {
        if (piece == 0 && threadIdx.x == 0) {
          const FastExp ex;
          Acc dy = g.g_lse * ex(Ty::load(in[g.y]) - g.lse) + g.g_t;
          if (g.s == g.y) dy += g.g_s;
          out[g.y] = Ty::store(dy);
          if (g.s >= 0 && g.s != g.y) out[g.s] = Ty::store(g.g_lse * ex(Ty::load(in[g.s]) - g.lse) + g.g_s);
        }
        continue;
      }
    }
    write_row_grad<D>(in, out, V, g, piece, pieces);
  }
}

template <DType D>
cudaError_t launch(const BackwardParams& p, int pieces, cudaStream_t stream) {
  using S = typename Types<D>::S;
  const int threads = threads_for(kThreads, (p.V + Pack<S>::kN - 1) / Pack<S>::kN / pieces);
  const int64_t items = p.B * p.T * pieces;
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
