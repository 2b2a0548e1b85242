// Device-side helpers shared by the forward and backward CUDA kernels:
// per-dtype load/store, 16-byte packs, and a row walk that uses 16-byte
// loads wherever the row's alignment allows.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>

#include "cringe/macros.h"
#include "cringe/row_math.h"

// How a kernel is launched and finds its dynamic shared memory. The tests
// compile these sources for the CPU as well (tests/simt: a SIMT simulator
// that defines CRINGE_SIMT_HOST and both macros); nvcc uses the CUDA forms.
#ifndef CRINGE_SIMT_HOST
// CRINGE_LAUNCH(grid, block, smem, stream, kernel)(args...); the kernel comes
// last because a template-id may hold commas.
#define CRINGE_LAUNCH(grid, block, smem_bytes, stream, ...) __VA_ARGS__<<<grid, block, smem_bytes, stream>>>
#define CRINGE_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

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

// e^x as 2^(x log2 e) on the special-function unit in two instructions (FFMA,
// MUFU.EX2), for the forward's sum of exp(x - shift): its terms are at most 1
// with the largest exactly 1, so flushing results below 2^-126 to zero
// changes the sum by less than one part in 10^38. (__expf adds denormal
// handling: six instructions.) `neg_shift_log2e` is -shift * log2(e).
__device__ __forceinline__ float exp_shifted_ftz(float x, float neg_shift_log2e) {
  const float e = fmaf(x, 1.4426950408889634f, neg_shift_log2e);
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(e));
  return y;
#else
  const float y = exp2f(e);
  return y < 1.17549435e-38f ? 0.0f : y;  // flush subnormal results, like .ftz
#endif
}

// 16-byte packs loaded per thread before use (memory-level parallelism).
constexpr int kUnroll = 4;

template <class S>
struct alignas(16) Pack {
  static constexpr int kN = 16 / sizeof(S);
  S v[kN];
};

// The columns of one 16-byte pack as accumulation values. A bfloat16 is the
// high half of its float, so each 32-bit pair comes apart with one shift and
// one mask instead of an extract and a shift per column (the forward's hot
// loop issues ~5 instructions a column; the extracts would add one and a
// half).
template <DType D>
__device__ __forceinline__ void unpack(const Pack<typename Types<D>::S>& pk,
                                       typename Types<D>::Acc (&x)[Pack<typename Types<D>::S>::kN]) {
  constexpr int kN = Pack<typename Types<D>::S>::kN;
  if constexpr (D == DType::kBFloat16) {
    uint32_t w[kN / 2];
    memcpy(w, pk.v, sizeof(w));  // not a pointer cast: that would break strict aliasing
#pragma unroll
    for (int j = 0; j < kN / 2; ++j) {
      x[2 * j] = __uint_as_float(w[j] << 16);  // little-endian: the lower column is the low half
      x[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
    }
  } else {
#pragma unroll
    for (int e = 0; e < kN; ++e) x[e] = Types<D>::load(pk.v[e]);
  }
}

// Elements before the first 16-byte boundary of a row (rows of a strided
// [B, T, V] view need not be aligned); the rest is walked in 16-byte packs.
template <class S>
__device__ __forceinline__ int head_elements(const S* row, int V) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(row);
  if (a % sizeof(S) != 0) return V;  // not even element-aligned: all scalar
  const int h = static_cast<int>(((16 - (a & 15)) & 15) / sizeof(S));
  return h < V ? h : V;
}

// Row i = b * T + t of the [B, T, V] logits (ForwardParams or
// BackwardParams), its offset in int64.
template <class S, class Params>
__device__ __forceinline__ const S* logits_row(const Params& p, int64_t i) {
  return static_cast<const S*>(p.logits) + (i / p.T) * p.stride_b + (i % p.T) * p.stride_t;
}

// The 16-byte packs [lo, hi) of piece `piece` of `pieces` of a row of
// `packs` packs (launch.h, RowSplit): consecutive, sizes differing by at
// most one, and [0, packs) for one piece.
__device__ __forceinline__ void piece_packs(int packs, int piece, int pieces, int& lo, int& hi) {
  lo = static_cast<int>(static_cast<int64_t>(packs) * piece / pieces);
  hi = static_cast<int>(static_cast<int64_t>(packs) * (piece + 1) / pieces);
}

// What the launchers size grids and shared memory by (host side): the
// device's SMs and shared memory per block (opt-in), per SM and reserved
// per block. Queried once per device and kept: the values never change, and
// each query is a runtime call on every launch otherwise.
struct DeviceLimits {
  int sms, smem_optin, smem_per_sm, smem_reserved;
};

constexpr int kMaxDevices = 64;

inline cudaError_t current_device_limits(DeviceLimits& out) {
  static std::atomic<bool> ready[kMaxDevices];
  static DeviceLimits limits[kMaxDevices];
  static std::mutex fill;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const bool cached = device >= 0 && device < kMaxDevices;
  if (cached && ready[device].load(std::memory_order_acquire)) {
    out = limits[device];
    return cudaSuccess;
  }
  DeviceLimits d{};
  err = cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
  }
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&d.smem_reserved, cudaDevAttrReservedSharedMemoryPerBlock, device);
  if (err != cudaSuccess) return err;
  if (cached) {
    std::lock_guard<std::mutex> lock(fill);
    if (!ready[device].load(std::memory_order_relaxed)) {
      limits[device] = d;
      ready[device].store(true, std::memory_order_release);
    }
  }
  out = d;
  return cudaSuccess;
}

// Threads per block (host side) for rows, or pieces of rows, of `packs`
// 16-byte packs: up to `threads`, halved while half of them would still
// have a pack each (short rows).
inline int threads_for(int threads, int64_t packs) {
  while (threads > 32 && threads / 2 >= packs) threads /= 2;
  return threads;
}

// max() that ignores a NaN operand (one FMNMX): the pack max that gates the
// log-sum-exp rescale and the top-k.
__device__ __forceinline__ float max_ignoring_nan(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_ignoring_nan(double a, double b) { return fmax(a, b); }

// Order-preserving map of a float onto an int: a < b iff ordered_int(a) <
// ordered_int(b), for every float but NaN, infinities included.
__device__ __forceinline__ int ordered_int(float f) {
  const int i = __float_as_int(f);
  return i >= 0 ? i : i ^ 0x7fffffff;
}

__device__ __forceinline__ long long ordered_int(double d) {
  const long long i = __double_as_longlong(d);
  return i >= 0 ? i : i ^ 0x7fffffffffffffffLL;
}

// The inverse of ordered_int.
template <class Acc>
__device__ __forceinline__ Acc from_ordered_int(int i) {
  static_assert(sizeof(Acc) == 4, "float keys map to int");
  return __int_as_float(i >= 0 ? i : i ^ 0x7fffffff);
}
template <class Acc>
__device__ __forceinline__ Acc from_ordered_int(long long i) {
  static_assert(sizeof(Acc) == 8, "double keys map to long long");
  return __longlong_as_double(i >= 0 ? i : i ^ 0x7fffffffffffffffLL);
}

// The largest v over the full warp: one redux.sync for 32-bit v on sm_80+,
// a butterfly of shuffles otherwise.
template <class Int>
__device__ __forceinline__ Int warp_max_int(Int v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr bool kRedux = sizeof(Int) == 4;
#else
  constexpr bool kRedux = false;
#endif
  if constexpr (kRedux) {
    return __reduce_max_sync(0xffffffffu, v);
  } else {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const Int o = __shfl_xor_sync(0xffffffffu, v, off);
      v = o > v ? o : v;
    }
    return v;
  }
}

// Asynchronous 16-byte copies from global to shared memory (cp.async,
// sm_80+): the thread goes on while the data lands; cp_async_commit() closes
// the thread's current group of copies and cp_async_wait<n>() returns once
// at most n of its committed groups are still in flight, their data then
// visible to this thread (only: another thread's reads need a barrier too).
// The tests' simulator lands each group only at that wait (simt_host.h), so
// a read that comes too early sees the wrong bytes there.
template <class T>
__device__ __forceinline__ void cp_async16(T* smem, const T* gmem) {
  static_assert(sizeof(T) == 16, "cp.async copies 16 bytes here");
#if defined(CRINGE_SIMT_HOST)
  ::simt::cp_async(smem, gmem, sizeof(T));
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem) : "memory");
#else
  *smem = *gmem;
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(CRINGE_SIMT_HOST)
  ::simt::cp_async_commit();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int kInFlight>
__device__ __forceinline__ void cp_async_wait() {
#if defined(CRINGE_SIMT_HOST)
  ::simt::cp_async_wait(kInFlight);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kInFlight) : "memory");
#endif
}

template <class T>
__device__ __forceinline__ T shfl_xor(T v, int mask) {
  return __shfl_xor_sync(0xffffffffu, v, mask);
}

}  // namespace cuda
}  // namespace cringe
