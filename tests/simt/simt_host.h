// The CUDA execution model on the CPU, for testing csrc/cuda without a GPU.
//
// Force-included (g++ -include) before each .cu file, which is then compiled
// as C++ with CRINGE_SIMT_HOST defined: the kernels, launchers and binding
// are the shipped sources; only the hardware and the CUDA runtime are
// replaced. The one change to the sources is mechanical: each whole-line
// `__shared__ T name[...];` declaration of a .cu file becomes a reference
// into the running block's shared memory (tests/simt/shared_decls.py); any
// other __shared__ stops the build. Every CUDA thread runs as a fiber
// (simt_runtime.cpp); a block's fibers are scheduled cooperatively, one block
// at a time, so
//   * __syncthreads() waits for every live thread of the block,
//   * warp shuffles wait for every lane of the warp and exchange values,
//   * a thread that waits where its block or warp never arrives (a barrier
//     in divergent code, lanes at different warp operations) is reported as
//     a std::runtime_error instead of a hang,
//   * shared memory, static (__shared__) and dynamic, belongs to the running
//     block and is filled with NaN bytes before every block, so a read
//     before write shows up in the results; more than 48 KiB of static
//     shared memory in a kernel is an error, as ptxas makes it,
//   * an access to shared memory outside every variable is an error,
//   * a thread steps aside before every access to shared memory (the .cu
//     files are compiled with -fsanitize=thread and the runtime supplies
//     the instrumentation's hooks), so the threads of a block take turns
//     access by access, as a warp's lanes do: a plain read-modify-write of a
//     shared counter by several threads loses updates, atomicAdd does not,
//   * launches are checked like the hardware checks them (block size, grid,
//     dynamic shared memory without opt-in).
//   * the order in which threads run between two steps is forward, reverse
//     or shuffled (CRINGE_SIMT_SCHEDULE), so a race between barriers shows up
//     as results that change with the order.
// Not modelled: timing, memory ordering between blocks (blocks run one after
// another), accesses to shared memory through memcpy (the cp.async copies
// land at their wait), and __activemask() (a lane sees only itself, as the
// kernels' own pre-sm_80 path does). Only one-dimensional blocks and grids.
// The AddressSanitizer build cannot also carry the thread instrumentation:
// there, threads step aside only at atomics, barriers and warp operations.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <new>
#include <tuple>
#include <type_traits>
#include <vector>

namespace simt {

struct ThreadContext {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
  // cp.async: this thread's copies of the open group, and its committed
  // groups (oldest first) that have not landed yet.
  struct AsyncCopy {
    void* dst;
    const void* src;
    size_t bytes;
  };
  mutable std::vector<AsyncCopy> async_open;
  mutable std::deque<std::vector<AsyncCopy>> async_committed;
};

// The simulated thread running now (set by the scheduler).
extern thread_local const ThreadContext* current;

// Dynamic shared memory of the running block.
unsigned char* dynamic_shared();

// The running block's copy of the static __shared__ variable `key`: `bytes`
// at `align`, laid out at the variable's first declaration in the launch and
// NaN bytes at the start of every block.
void* static_shared(const void* key, size_t bytes, size_t align);

// `T name[...]` of a rewritten `__shared__ T name[...];` (one instantiation
// per declaration: `Tag` is a lambda written there).
template <class T, class Tag>
T& shared_variable(Tag) {
  static_assert(std::is_trivially_default_constructible<T>::value && std::is_trivially_destructible<T>::value,
                "a __shared__ variable has no constructor or destructor");
  static const char key = 0;
  return *std::launder(static_cast<T*>(static_shared(&key, sizeof(T), alignof(T))));
}

// Called before every access of the running thread to `bytes` at `address`:
// on shared memory, the thread steps aside (one access per turn), and an
// access outside every shared variable and the dynamic shared memory (an
// index of -1) is a std::runtime_error; elsewhere a no-op.
void before_access(const volatile void* address, size_t bytes);

// __syncthreads(); __syncthreads_or(pred) when `reduce_or` (the OR over the
// block's threads of `pred` is returned to every thread).
int sync_block(int pred = 0, bool reduce_or = false);

// Waits until every lane of the caller's warp has called this with the same
// `op` and `mask`, then copies all lanes' `mine` into `all` (indexed by lane).
void warp_gather(uint64_t mine, unsigned mask, const char* op, uint64_t all[32]);

// Runs `body` as every thread of a grid of `kernel`, checking the
// configuration first (dynamic shared memory above 48 KiB needs the
// kernel's cudaFuncSetAttribute opt-in); the result is what
// cudaGetLastError() returns next.
void launch(dim3 grid, dim3 block, size_t dynamic_smem, const void* kernel, const std::function<void()>& body);

template <class... P>
struct Launch {
  dim3 grid, block;
  size_t smem;
  void (*kernel)(P...);

  template <class... A>
  void operator()(A&&... args) const {
    std::tuple<P...> bound(std::forward<A>(args)...);  // copied once, like kernel parameters
    launch(grid, block, smem, reinterpret_cast<const void*>(kernel), [&] { std::apply(kernel, bound); });
  }
};

template <class... P>
Launch<P...> configure(dim3 grid, dim3 block, size_t smem, void (*kernel)(P...)) {
  return {grid, block, smem, kernel};
}

// cp.async (csrc/cuda/common.cuh): a copy is queued in the thread's open
// group and lands only when a wait leaves fewer groups in flight than are
// committed, so data read before its wait is whatever the shared memory
// held (NaN bytes at the block's start). The source is read then too, like
// the hardware, which may read it any time before the wait returns.
inline void cp_async(void* dst, const void* src, size_t bytes) { current->async_open.push_back({dst, src, bytes}); }
inline void cp_async_commit() {
  current->async_committed.push_back(std::move(current->async_open));
  current->async_open.clear();
}
inline void cp_async_wait(int in_flight) {
  auto& groups = current->async_committed;
  while (static_cast<int>(groups.size()) > in_flight) {
    for (const auto& c : groups.front()) std::memcpy(c.dst, c.src, c.bytes);
    groups.pop_front();
  }
}

template <class T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp operations move at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}

template <class T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

}  // namespace simt

// ---- CUDA keywords and built-in variables -----------------------------------
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#define __global__
#define __device__
#define __host__
// Declarations are rewritten before compiling (see the top of this file):
// one left over is an error, not a variable shared by every block.
#define __shared__ static_assert(false, "tests/simt: a __shared__ declaration that shared_decls.py did not rewrite");
#define __launch_bounds__(...)

#define threadIdx (::simt::current->thread_idx)
#define blockIdx (::simt::current->block_idx)
#define blockDim (::simt::current->block_dim)
#define gridDim (::simt::current->grid_dim)

#define CRINGE_DYNAMIC_SHARED(name) unsigned char* const name = ::simt::dynamic_shared()
#define CRINGE_LAUNCH(grid, block, smem_bytes, stream, ...) ::simt::configure(grid, block, smem_bytes, &__VA_ARGS__)

// ---- Device intrinsics the kernels use ---------------------------------------
inline void __syncthreads() { ::simt::sync_block(); }
inline int __syncthreads_or(int predicate) { return ::simt::sync_block(predicate != 0, true); }

// One turn: a thread steps aside before the access, not between its read
// and its write (simt_runtime.cpp, which is not instrumented).
int atomicAdd(int* address, int v);

inline int __popc(unsigned v) { return __builtin_popcount(v); }

template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  uint64_t all[32];
  ::simt::warp_gather(::simt::to_bits(v), mask, "__shfl_sync", all);
  const int lane = static_cast<int>(threadIdx.x % 32);
  return ::simt::from_bits<T>(all[(lane / width) * width + src_lane % width]);
}

template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  uint64_t all[32];
  ::simt::warp_gather(::simt::to_bits(v), mask, "__shfl_up_sync", all);
  const int lane = static_cast<int>(threadIdx.x % 32);
  // Lanes below `delta` in their segment keep their own value.
  return (lane % width) >= static_cast<int>(delta) ? ::simt::from_bits<T>(all[lane - delta]) : v;
}

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  uint64_t all[32];
  ::simt::warp_gather(::simt::to_bits(v), mask, "__shfl_xor_sync", all);
  const int lane = static_cast<int>(threadIdx.x % 32);
  // Like the hardware: a source lane outside the caller's width-segment
  // returns the caller's own value.
  const int src = lane ^ lane_mask;
  return (src / width == lane / width) ? ::simt::from_bits<T>(all[src]) : v;
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  uint64_t all[32];
  ::simt::warp_gather(predicate != 0, mask, "__ballot_sync", all);
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l) bits |= (all[l] != 0 && ((mask >> l) & 1u)) ? (1u << l) : 0u;
  return bits;
}

inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0u; }

// A rendezvous of the lanes in `mask`, like the other warp operations.
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  uint64_t all[32];
  ::simt::warp_gather(0, mask, "__syncwarp", all);
}

inline float __expf(float x) { return std::exp(x); }
inline int __float_as_int(float f) { return ::simt::from_bits<int>(::simt::to_bits(f)); }
inline float __int_as_float(int i) { return ::simt::from_bits<float>(::simt::to_bits(i)); }
inline float __uint_as_float(unsigned u) { return ::simt::from_bits<float>(::simt::to_bits(u)); }
inline long long __double_as_longlong(double d) { return ::simt::from_bits<long long>(::simt::to_bits(d)); }
inline double __longlong_as_double(long long i) { return ::simt::from_bits<double>(::simt::to_bits(i)); }
