// One row of the logits' gradient, written by a whole block:
//   dx_j = g_lse * exp(x_j - lse) + g_t [j == y] + g_s [j == s]
// computed in the accumulation type and rounded once at the store (so the
// target column's g_t is not rounded separately in bfloat16), with 16-byte
// loads and stores where the row's alignment allows. In place works
// because every element is read before its own store and by the same thread.
// Used by the backward kernel and by the forward that writes the gradient.
// With pieces > 1 (launch.h, RowSplit) a block writes only piece `piece`:
// its range of 16-byte packs, and for piece 0 also the unaligned head and
// the tail. Packs below `cached_packs` are read from `cached` (shared
// memory holding the row's first packs, stored by the thread that reads
// them here: same index modulo blockDim) instead of `in`. kLastFirst: each
// thread takes its packs from the row's end to its start (same values).
#pragma once

#include "common.cuh"

namespace cringe {
namespace cuda {

template <class Acc>
struct RowGrad {
  Acc g_lse, lse, g_t, g_s;
  int y, s;   // columns of g_t and g_s; -1: none
  bool zero;  // write zeros whatever the logits hold (ignored rows)
};

template <DType D, bool kLastFirst = false>
__device__ __forceinline__ void write_row_grad(const typename Types<D>::S* in, typename Types<D>::S* out, int V,
                                               const RowGrad<typename Types<D>::Acc>& g, int piece = 0,
                                               int pieces = 1, const Pack<typename Types<D>::S>* cached = nullptr,
                                               int cached_packs = 0) {
  using Ty = Types<D>;
  using S = typename Ty::S;
  using Acc = typename Ty::Acc;
  constexpr int kN = Pack<S>::kN;
  const FastExp ex;
  auto grad_of = [&](int col, S raw) -> S {
    if (g.zero) return Ty::store(Acc(0));
    Acc d = g.g_lse * ex(Ty::load(raw) - g.lse);
    if (col == g.y) d += g.g_t;
    if (col == g.s) d += g.g_s;
    return Ty::store(d);
  };

  const int head = head_elements(in, V);
  const bool out_aligned = (reinterpret_cast<uintptr_t>(out + head) & 15) == 0;
  const int packs = (V - head) / kN;
  if (piece == 0) {
    for (int j = threadIdx.x; j < head; j += blockDim.x) out[j] = grad_of(j, in[j]);
    for (int j = head + packs * kN + threadIdx.x; j < V; j += blockDim.x) out[j] = grad_of(j, in[j]);
  }
  int lo, hi;
  piece_packs(packs, piece, pieces, lo, hi);
  const Pack<S>* body = reinterpret_cast<const Pack<S>*>(in + head);
  auto load = [&](int q) { return q < cached_packs ? cached[q] : body[q]; };
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
  // This thread's packs lo + t + j T, j up from 0, or (kLastFirst) down
  // from the last: a row the block has just read is still in L2 at its
  // end, not at its start. Walking one way, only the bound ahead can fail.
  const int T = blockDim.x;
  const int step = kLastFirst ? -T : T;
  int q = lo + static_cast<int>(threadIdx.x);
  if (kLastFirst) q = q < hi ? q + (hi - 1 - q) / T * T : lo - 1;  // lo - 1: no pack for this thread
  auto mine = [&](int c) { return kLastFirst ? c >= lo : c < hi; };
  for (; mine(q + (kUnroll - 1) * step); q += kUnroll * step) {  // kUnroll loads in flight
    Pack<S> pk[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) pk[u] = load(q + u * step);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) emit(q + u * step, pk[u]);
  }
  for (; mine(q); q += step) emit(q, load(q));
}

}  // namespace cuda
}  // namespace cringe
