// CUDA backward kernel: dx = g_lse * exp(x - lse) + g_t [j == y] + g_s [j == s].
//
// One block per row, one read and one write of the row, 16-byte loads and
// stores where the row's alignment allows. Everything is computed in the
// accumulation type and rounded once at the store (so the target column's
// g_t is not rounded separately in bfloat16). In place works because every
// element is read before its own store and by the same thread.
#include <climits>

#include "common.cuh"
#include "launch.h"

namespace cringe {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <DType D>
__global__ void __launch_bounds__(kThreads) backward_kernel(const BackwardParams p) {
  using Ty = Types<D>;
  using S = typename Ty::S;
  using Acc = typename Ty::Acc;
  constexpr int kN = Pack<S>::kN;
  const int V = static_cast<int>(p.V);
  const int64_t N = p.B * p.T;
  const FastExp ex;

  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const int64_t b = i / p.T, t = i % p.T;
    const S* in = static_cast<const S*>(p.logits) + b * p.stride_b + t * p.stride_t;
    S* out = static_cast<S*>(p.grad) + b * p.grad_stride_b + t * p.grad_stride_t;
    const int64_t y = p.target[i];
    const bool ignored = y == p.ignore_index;
    Acc l = Acc(0), gl = Acc(0), gt = Acc(0), gs = Acc(0);
    int yc = -1, sc = -1;
    if (!ignored) {
      l = static_cast<const Acc*>(p.lse)[i];
      gl = static_cast<const Acc*>(p.grad_lse)[i];
      gt = static_cast<const Acc*>(p.grad_target)[i];
      gs = static_cast<const Acc*>(p.grad_sample)[i];
      const int64_t s = p.sample_index[i];
      yc = (y >= 0 && y < V) ? static_cast<int>(y) : -1;
      sc = (s >= 0 && s < V) ? static_cast<int>(s) : -1;
    }
    // Ignored rows get exact zeros whatever their logits hold (NaN included).
    auto grad_of = [&](int col, S raw) -> S {
      if (ignored) return Ty::store(Acc(0));
      Acc d = gl * ex(Ty::load(raw) - l);
      if (col == yc) d += gt;
      if (col == sc) d += gs;
      return Ty::store(d);
    };

    const int head = head_elements(in, V);
    const bool out_aligned = (reinterpret_cast<uintptr_t>(out + head) & 15) == 0;
    for (int j = threadIdx.x; j < head; j += blockDim.x) out[j] = grad_of(j, in[j]);
    const int packs = (V - head) / kN;
    const Pack<S>* body = reinterpret_cast<const Pack<S>*>(in + head);
    // Store one pack computed from pk (pack index q).
    auto emit = [&](int q, const Pack<S>& pk) {
      Pack<S> o;
#pragma unroll
      for (int e = 0; e < kN; ++e) o.v[e] = grad_of(head + q * kN + e, pk.v[e]);
      if (out_aligned) {
        reinterpret_cast<Pack<S>*>(out + head)[q] = o;
      } else {
#pragma unroll
        for (int e = 0; e < kN; ++e) out[head + q * kN + e] = o.v[e];
      }
    };
    const int T = blockDim.x;
    int q = threadIdx.x;
    for (; q + (kUnroll - 1) * T < packs; q += kUnroll * T) {  // kUnroll loads in flight
      Pack<S> pk[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) pk[u] = body[q + u * T];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) emit(q + u * T, pk[u]);
    }
    for (; q < packs; q += T) emit(q, body[q]);
    for (int j = head + packs * kN + threadIdx.x; j < V; j += blockDim.x) out[j] = grad_of(j, in[j]);
  }
}

template <DType D>
cudaError_t launch(const BackwardParams& p, cudaStream_t stream) {
  using S = typename Types<D>::S;
  int threads = kThreads;
  const int64_t packs = (p.V + Pack<S>::kN - 1) / Pack<S>::kN;
  while (threads > 32 && threads / 2 >= packs) threads /= 2;
  const int64_t N = p.B * p.T;
  const unsigned grid = static_cast<unsigned>(N < INT_MAX ? N : INT_MAX);
  CRINGE_LAUNCH(grid, threads, 0, stream, backward_kernel<D>)(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_backward(const BackwardParams& p, cudaStream_t stream) {
  if (p.B < 0 || p.T < 0 || p.V < 2 || p.V > kMaxV) return cudaErrorInvalidValue;
  if (p.B * p.T == 0) return cudaSuccess;
  switch (p.dtype) {
    case DType::kFloat32: return launch<DType::kFloat32>(p, stream);
    case DType::kFloat64: return launch<DType::kFloat64>(p, stream);
    case DType::kFloat16: return launch<DType::kFloat16>(p, stream);
    case DType::kBFloat16: return launch<DType::kBFloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace cringe
