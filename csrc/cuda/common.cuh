// Device-side helpers shared by the forward and backward CUDA kernels:
// per-dtype load/store, 16-byte packs, and a row walk that uses 16-byte
// loads wherever the row's alignment allows.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cringe/macros.h"
#include "cringe/row_math.h"

namespace cringe {
namespace cuda {

template <DType D>
struct Types;
template <>
struct Types<DType::kFloat32> {
  using S = float;
  using Acc = float;
  static __device__ __forceinline__ float load(float v) { return v; }
  static __device__ __forceinline__ float store(float a) { return a; }
};
template <>
struct Types<DType::kFloat64> {
  using S = double;
  using Acc = double;
  static __device__ __forceinline__ double load(double v) { return v; }
  static __device__ __forceinline__ double store(double a) { return a; }
};
template <>
struct Types<DType::kFloat16> {
  using S = uint16_t;
  using Acc = float;
  static __device__ __forceinline__ float load(uint16_t v) { return __half2float(__ushort_as_half(v)); }
  static __device__ __forceinline__ uint16_t store(float a) { return __half_as_ushort(__float2half_rn(a)); }
};
template <>
struct Types<DType::kBFloat16> {
  using S = uint16_t;
  using Acc = float;
  static __device__ __forceinline__ float load(uint16_t v) { return __uint_as_float(static_cast<uint32_t>(v) << 16); }
  static __device__ __forceinline__ uint16_t store(float a) { return __bfloat16_as_ushort(__float2bfloat16_rn(a)); }
};

// Fast exp for the bulk sums (the draw uses the accurate one in row_math.h).
struct FastExp {
  __device__ __forceinline__ float operator()(float x) const { return __expf(x); }
  __device__ __forceinline__ double operator()(double x) const { return exp(x); }
};

// 16-byte packs loaded per thread before use (memory-level parallelism).
constexpr int kUnroll = 4;

template <class S>
struct alignas(16) Pack {
  static constexpr int kN = 16 / sizeof(S);
  S v[kN];
};

// Elements before the first 16-byte boundary of a row (rows of a strided
// [B, T, V] view need not be aligned); the rest is walked in 16-byte packs.
template <class S>
__device__ __forceinline__ int head_elements(const S* row, int V) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(row);
  if (a % sizeof(S) != 0) return V;  // not even element-aligned: all scalar
  const int h = static_cast<int>(((16 - (a & 15)) & 15) / sizeof(S));
  return h < V ? h : V;
}

// Calls f(col, value) for this thread's columns of the row, in ascending
// column order per thread (the top-k relies on it): the unaligned head, then
// 16-byte packs strided by blockDim, then the tail.
template <class S, class F>
__device__ __forceinline__ void walk_row(const S* row, int V, F&& f) {
  constexpr int kN = Pack<S>::kN;
  const int head = head_elements(row, V);
  for (int j = threadIdx.x; j < head; j += blockDim.x) f(j, row[j]);
  const int packs = (V - head) / kN;
  const Pack<S>* body = reinterpret_cast<const Pack<S>*>(row + head);
  const int T = blockDim.x;
  int p = threadIdx.x;
  // kUnroll loads in flight per thread before any is used: small blocks
  // (large k) still keep enough bytes in flight to cover memory latency.
  for (; p + (kUnroll - 1) * T < packs; p += kUnroll * T) {
    Pack<S> pk[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) pk[u] = body[p + u * T];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int e = 0; e < kN; ++e) f(head + (p + u * T) * kN + e, pk[u].v[e]);
    }
  }
  for (; p < packs; p += T) {
    const Pack<S> pk = body[p];
#pragma unroll
    for (int e = 0; e < kN; ++e) f(head + p * kN + e, pk.v[e]);
  }
  for (int j = head + packs * kN + threadIdx.x; j < V; j += blockDim.x) f(j, row[j]);
}

template <class T>
__device__ __forceinline__ T shfl_xor(T v, int mask) {
  return __shfl_xor_sync(0xffffffffu, v, mask);
}

}  // namespace cuda
}  // namespace cringe
