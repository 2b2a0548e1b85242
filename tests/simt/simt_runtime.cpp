// Scheduler of the SIMT simulator (simt_host.h) and the few CUDA runtime
// calls the binding and the launchers make, so the simulated module links without libcudart.
//
// Each simulated CUDA thread is a fiber with its own stack. A block's fibers
// run round-robin on the calling OS thread; a fiber runs until it finishes,
// must wait (block barrier, warp operation) or is about to access shared
// memory, and then hands control back. A full round in which no fiber
// arrives anywhere, accesses shared memory, finishes or is released is a
// deadlock: every waiter is reported and the launch fails.
//
// This file is compiled without the thread instrumentation that the .cu
// files carry: it supplies the instrumentation's hooks (__tsan_*), which
// make a fiber step aside before each access to the running block's shared
// memory and do nothing elsewhere.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "simt_host.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

// Under AddressSanitizer (the memcheck build, tests/cuda_sim.py) every stack
// switch is announced, so that ASan follows the fibers' stacks.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define SIMT_START_SWITCH(fake_save, bottom, size) __sanitizer_start_switch_fiber(fake_save, bottom, size)
#define SIMT_FINISH_SWITCH(fake, bottom_old, size_old) __sanitizer_finish_switch_fiber(fake, bottom_old, size_old)
#else
#define SIMT_START_SWITCH(fake_save, bottom, size) ((void)0)
#define SIMT_FINISH_SWITCH(fake, bottom_old, size_old) ((void)0)
#endif

namespace simt {

thread_local const ThreadContext* current = nullptr;

namespace {

// Kernels keep small arrays and lambdas on their stacks; 64 KiB is ample and
// keeps a 1024-thread block at 64 MiB of (mostly untouched) memory.
constexpr size_t kStackBytes = 64 * 1024;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr size_t kMaxDynamicShared = 48 * 1024;  // without cudaFuncSetAttribute opt-in
constexpr int kMaxSharedOptin = 227 * 1024;       // an H100's, per block
constexpr int kSharedPerSm = 228 * 1024;          // and per SM
constexpr int kReservedSharedPerBlock = 1024;
constexpr int kMaxThreadsPerSm = 2048;
constexpr int kMaxBlocksPerSm = 32;
constexpr size_t kMaxStaticShared = 48 * 1024;  // ptxas refuses more per kernel
// Bytes on either side of a block's shared memory in which an access is
// reported instead of landing in another allocation (an index of -1).
constexpr size_t kSharedGuard = 64 * 1024;

// Each kernel's cudaFuncAttributeMaxDynamicSharedMemorySize.
std::map<const void*, size_t>& dynamic_smem_limits() {
  static std::map<const void*, size_t> limits;
  return limits;
}
constexpr unsigned kMaxGridX = 2147483647u;

#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores the stack
// pointer in *save, switches to `load` and restores the registers saved there.
extern "C" void simt_switch_stack(void** save, void* load);
asm(R"(
    .text
    .p2align 4
    .globl simt_switch_stack
    .hidden simt_switch_stack
    .type simt_switch_stack, @function
simt_switch_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size simt_switch_stack, .-simt_switch_stack
)");

struct Context {
  void* sp = nullptr;
};

void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;                           // entry's return address: it never returns
  *--sp = reinterpret_cast<void*>(entry);    // popped by `ret`: entry starts as if called
  for (int r = 0; r < 6; ++r) *--sp = nullptr;  // rbp rbx r12-r15
  c.sp = sp;
}

void switch_context(Context& from, Context& to) { simt_switch_stack(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};

void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}

void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

struct Fiber {
  Context ctx;
  ThreadContext ids;
  bool done = false;
  const char* waiting = nullptr;  // what it waits for, for the deadlock report
  // Blocked while *wait_counter == wait_value (a barrier's or a warp's
  // generation): the scheduler skips it without switching to it.
  const uint64_t* wait_counter = nullptr;
  uint64_t wait_value = 0;
  char* stack = nullptr;
  void* asan_fake_stack = nullptr;
};

struct Warp {
  int arrived = 0;
  uint64_t generation = 0;
  const char* op = nullptr;
  unsigned mask = 0;
  uint64_t slot[32] = {};
  uint64_t result[32] = {};
};

struct Block {
  std::vector<Fiber> fibers;
  std::unique_ptr<char[]> stacks;
  size_t stacks_for = 0;
  std::vector<Warp> warps;
  // Shared memory: kMaxStaticShared bytes for the static variables (laid out
  // by the first block that declares them), then the dynamic bytes, with
  // kSharedGuard bytes before and after (`smem` points past the first).
  std::unique_ptr<unsigned char[]> allocation;
  unsigned char* smem = nullptr;
  size_t dynamic_bytes = 0;
  std::vector<std::pair<const void*, size_t>> static_offsets;  // (key, offset)
  size_t static_used = 0;
  int live = 0;
  int barrier_arrived = 0;
  uint64_t barrier_generation = 0;
  int barrier_or = 0;         // __syncthreads_or: accumulated while threads arrive
  int barrier_or_result = 0;  // and published at the release
  uint64_t progress = 0;
  const std::function<void()>* body = nullptr;
  Fiber* running = nullptr;
  Context scheduler;
  const void* scheduler_stack = nullptr;  // for ASan: the OS thread's stack
  size_t scheduler_stack_size = 0;
  std::exception_ptr error;
};

thread_local Block* g_block = nullptr;
thread_local cudaError_t g_last_error = cudaSuccess;

// One launch at a time in the process: the shared-memory range below is
// global, so that the hooks test it without a thread-local lookup.
std::mutex g_launch_mutex;
std::atomic<uintptr_t> g_shared_lo{0}, g_shared_hi{0};

// The fiber side of a switch to the scheduler and back.
void to_scheduler(Block& b, Fiber& f) {
  SIMT_START_SWITCH(&f.asan_fake_stack, b.scheduler_stack, b.scheduler_stack_size);
  switch_context(f.ctx, b.scheduler);
  SIMT_FINISH_SWITCH(f.asan_fake_stack, &b.scheduler_stack, &b.scheduler_stack_size);
}

void yield_waiting(const char* what) {
  Block& b = *g_block;
  Fiber& f = *b.running;
  f.waiting = what;
  to_scheduler(b, f);
  f.waiting = nullptr;
}

// Hands control back until *counter changes.
void wait_for_change(const char* what, const uint64_t* counter) {
  Fiber& f = *g_block->running;
  f.wait_counter = counter;
  f.wait_value = *counter;
  while (*counter == f.wait_value) yield_waiting(what);
  f.wait_counter = nullptr;
}

void release_barrier(Block& b) {
  b.barrier_or_result = b.barrier_or;
  b.barrier_or = 0;
  b.barrier_arrived = 0;
  ++b.barrier_generation;
  ++b.progress;
}

[[noreturn]] void fiber_main() {
  Block& b = *g_block;
  SIMT_FINISH_SWITCH(nullptr, &b.scheduler_stack, &b.scheduler_stack_size);
  try {
    (*b.body)();
  } catch (...) {
    if (!b.error) b.error = std::current_exception();
  }
  b.running->done = true;
  --b.live;
  ++b.progress;
  // Exited threads no longer hold a barrier back.
  if (b.barrier_arrived > 0 && b.barrier_arrived >= b.live) release_barrier(b);
  SIMT_START_SWITCH(nullptr, b.scheduler_stack, b.scheduler_stack_size);  // this stack is done
  switch_context(b.running->ctx, b.scheduler);
  std::abort();  // a finished fiber is never resumed
}

std::string deadlock_report(const Block& b) {
  std::string msg = "simt: deadlock in block " + std::to_string(b.fibers[0].ids.block_idx.x) + ":";
  int shown = 0;
  for (size_t t = 0; t < b.fibers.size(); ++t) {
    const Fiber& f = b.fibers[t];
    if (f.done || shown >= 8) continue;
    msg += " thread " + std::to_string(t) + " waits at " + (f.waiting ? f.waiting : "?") + ";";
    ++shown;
  }
  msg += " (" + std::to_string(b.barrier_arrived) + " of " + std::to_string(b.live) +
         " live threads at __syncthreads; a barrier or warp operation in divergent code?)";
  return msg;
}

enum class Schedule { kForward, kReverse, kShuffle };

Schedule schedule_from_env() {
  const char* v = std::getenv("CRINGE_SIMT_SCHEDULE");
  if (v == nullptr || std::strcmp(v, "forward") == 0 || *v == '\0') return Schedule::kForward;
  if (std::strcmp(v, "reverse") == 0) return Schedule::kReverse;
  if (std::strcmp(v, "shuffle") == 0) return Schedule::kShuffle;
  throw std::invalid_argument(std::string("CRINGE_SIMT_SCHEDULE must be forward, reverse or shuffle; got ") + v);
}

void run_block(Block& b, dim3 block_idx, dim3 block_dim, dim3 grid_dim, Schedule schedule) {
  const int n = static_cast<int>(block_dim.x);
  b.fibers.assign(n, Fiber{});
  if (b.stacks_for < static_cast<size_t>(n)) {
    b.stacks.reset(new char[kStackBytes * n]);
    b.stacks_for = n;
  }
  b.warps.assign((n + 31) / 32, Warp{});
  // NaN in every float type, in every static variable and the dynamic bytes.
  std::memset(b.smem, 0xFF, b.static_used);
  std::memset(b.smem + kMaxStaticShared, 0xFF, b.dynamic_bytes);
  b.live = n;
  b.barrier_arrived = 0;
  b.barrier_or = 0;
  for (int t = 0; t < n; ++t) {
    b.fibers[t].ids = ThreadContext{dim3(t), block_idx, block_dim, grid_dim};
    b.fibers[t].stack = b.stacks.get() + kStackBytes * t;
    make_context(b.fibers[t].ctx, b.fibers[t].stack, kStackBytes, &fiber_main);
  }
  // The order in which the fibers run between two synchronisation points
  // (CRINGE_SIMT_SCHEDULE): a kernel whose results depend on it has a race
  // (threads touching the same shared data with no barrier in between).
  std::vector<int> order(n);
  for (int t = 0; t < n; ++t) order[t] = t;
  if (schedule == Schedule::kReverse) std::reverse(order.begin(), order.end());
  uint64_t mix = 0x9E3779B97F4A7C15ull ^ (static_cast<uint64_t>(block_idx.x) + 1);
  while (b.live > 0) {
    const uint64_t before = b.progress;
    if (schedule == Schedule::kShuffle) {  // a fresh order every pass (xorshift)
      for (int t = n - 1; t > 0; --t) {
        mix ^= mix << 13;
        mix ^= mix >> 7;
        mix ^= mix << 17;
        std::swap(order[t], order[static_cast<int>(mix % static_cast<uint64_t>(t + 1))]);
      }
    }
    for (int t : order) {
      Fiber& f = b.fibers[t];
      if (f.done || (f.wait_counter != nullptr && *f.wait_counter == f.wait_value)) continue;
      b.running = &f;
      current = &f.ids;
      void* scheduler_fake_stack = nullptr;
      SIMT_START_SWITCH(&scheduler_fake_stack, f.stack, kStackBytes);
      switch_context(b.scheduler, f.ctx);
      SIMT_FINISH_SWITCH(scheduler_fake_stack, nullptr, nullptr);
      b.running = nullptr;
      if (b.error) break;
    }
    b.running = nullptr;
    current = nullptr;
    if (b.error) std::rethrow_exception(b.error);
    if (b.live > 0 && b.progress == before) throw std::runtime_error(deadlock_report(b));
  }
}

}  // namespace

unsigned char* dynamic_shared() { return g_block->smem + kMaxStaticShared; }

void* static_shared(const void* key, size_t bytes, size_t align) {
  Block& b = *g_block;
  for (const auto& [k, offset] : b.static_offsets) {
    if (k == key) return b.smem + offset;
  }
  align = std::max<size_t>(align, 16);
  const size_t offset = (b.static_used + align - 1) / align * align;
  if (offset + bytes > kMaxStaticShared) {
    throw std::runtime_error("simt: more than 48 KiB of static __shared__ memory in one kernel");
  }
  b.static_offsets.emplace_back(key, offset);
  b.static_used = offset + bytes;
  return b.smem + offset;  // still NaN bytes: nothing used them in this launch
}

void before_access(const volatile void* address, size_t bytes) {
  const auto a = reinterpret_cast<uintptr_t>(address);
  if (a < g_shared_lo.load(std::memory_order_relaxed) || a >= g_shared_hi.load(std::memory_order_relaxed)) return;
  Block* b = g_block;
  if (b == nullptr || b->running == nullptr) return;  // the scheduler's own poisoning
  const auto base = reinterpret_cast<uintptr_t>(b->smem);
  const bool in_static = a >= base && a + bytes <= base + b->static_used;
  const bool in_dynamic = a >= base + kMaxStaticShared && a + bytes <= base + kMaxStaticShared + b->dynamic_bytes;
  if (!in_static && !in_dynamic) {
    throw std::runtime_error("simt: thread " + std::to_string(current->thread_idx.x) + " of block " +
                             std::to_string(current->block_idx.x) + " accesses " + std::to_string(bytes) +
                             " bytes of shared memory outside every variable and the dynamic shared memory");
  }
  ++b->progress;
  yield_waiting("a shared memory access");
}

int sync_block(int pred, bool reduce_or) {
  Block& b = *g_block;
  ++b.progress;
  b.barrier_or |= pred;
  if (++b.barrier_arrived >= b.live) {
    release_barrier(b);
    // Step aside, so that the schedule, not the last arrival, decides who
    // runs first after the barrier.
    yield_waiting("a released __syncthreads");
  } else {
    wait_for_change(reduce_or ? "__syncthreads_or" : "__syncthreads", &b.barrier_generation);
  }
  // Safe to read: the result changes only at the next release, which needs
  // this thread to arrive again.
  return b.barrier_or_result;
}

void warp_gather(uint64_t mine, unsigned mask, const char* op, uint64_t all[32]) {
  Block& b = *g_block;
  const int tid = static_cast<int>(current->thread_idx.x);
  const int nthreads = static_cast<int>(current->block_dim.x);
  Warp& w = b.warps[tid / 32];
  const int lane = tid % 32;
  const int lanes = std::min(32, nthreads - (tid / 32) * 32);
  const unsigned full = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  if (mask != full) {
    throw std::logic_error(std::string("simt: ") + op + " with mask " + std::to_string(mask) +
                           ": the simulator models full-warp operations only");
  }
  if (w.arrived == 0) {
    w.op = op;
    w.mask = mask;
  } else if (w.op != op || w.mask != mask) {
    throw std::logic_error(std::string("simt: lane ") + std::to_string(lane) + " calls " + op + " while its warp is in " +
                           w.op + " (divergent warp operations)");
  }
  w.slot[lane] = mine;
  ++b.progress;
  if (++w.arrived == lanes) {
    std::copy(w.slot, w.slot + 32, w.result);
    w.arrived = 0;
    ++w.generation;
    std::copy(w.result, w.result + 32, all);
    yield_waiting("a completed warp operation");  // as after a barrier
    return;
  } else {
    wait_for_change(op, &w.generation);
  }
  // Safe to read: `result` changes only when every lane, this one included,
  // has arrived at the next operation.
  std::copy(w.result, w.result + 32, all);
}

void launch(dim3 grid, dim3 block, size_t dynamic_smem, const void* kernel, const std::function<void()>& body) {
  if (block.x < 1 || block.x > kMaxThreadsPerBlock || block.y != 1 || block.z != 1 || grid.x < 1 ||
      grid.x > kMaxGridX || grid.y != 1 || grid.z != 1) {
    g_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  const auto optin = dynamic_smem_limits().find(kernel);
  if (dynamic_smem > (optin != dynamic_smem_limits().end() ? optin->second : kMaxDynamicShared)) {
    g_last_error = cudaErrorInvalidValue;
    return;
  }
  if (g_block != nullptr) throw std::logic_error("simt: a kernel launched from inside a kernel");
  std::lock_guard<std::mutex> one_launch(g_launch_mutex);
  Block b;
  b.allocation.reset(new unsigned char[kSharedGuard + kMaxStaticShared + dynamic_smem + kSharedGuard]);
  std::memset(b.allocation.get(), 0xFF, kSharedGuard + kMaxStaticShared + dynamic_smem + kSharedGuard);
  b.smem = b.allocation.get() + kSharedGuard;
  b.dynamic_bytes = dynamic_smem;
  b.body = &body;
  g_block = &b;
  const auto lo = reinterpret_cast<uintptr_t>(b.allocation.get());
  g_shared_lo.store(lo);
  g_shared_hi.store(lo + kSharedGuard + kMaxStaticShared + dynamic_smem + kSharedGuard);
  auto leave = [&] {
    g_shared_lo.store(0);
    g_shared_hi.store(0);
    g_block = nullptr;
    current = nullptr;
  };
  try {
    const Schedule schedule = schedule_from_env();
    for (unsigned i = 0; i < grid.x; ++i) run_block(b, dim3(i), block, grid, schedule);
  } catch (...) {
    leave();
    throw;
  }
  leave();
}

}  // namespace simt

int atomicAdd(int* address, int v) {
  simt::before_access(address, sizeof(int));
  const int old = *address;
  *address = old + v;
  return old;
}

// ---- The hooks of -fsanitize=thread (GCC's instrumentation of the .cu files)
extern "C" {
#define SIMT_ACCESS_HOOKS(n)                                                         \
  void __tsan_read##n(void* a) { simt::before_access(a, n); }                       \
  void __tsan_write##n(void* a) { simt::before_access(a, n); }                      \
  void __tsan_unaligned_read##n(void* a) { simt::before_access(a, n); }             \
  void __tsan_unaligned_write##n(void* a) { simt::before_access(a, n); }            \
  void __tsan_volatile_read##n(void* a) { simt::before_access(a, n); }              \
  void __tsan_volatile_write##n(void* a) { simt::before_access(a, n); }
SIMT_ACCESS_HOOKS(1)
SIMT_ACCESS_HOOKS(2)
SIMT_ACCESS_HOOKS(4)
SIMT_ACCESS_HOOKS(8)
SIMT_ACCESS_HOOKS(16)
#undef SIMT_ACCESS_HOOKS
void __tsan_read_range(void* a, unsigned long n) { simt::before_access(a, n); }
void __tsan_write_range(void* a, unsigned long n) { simt::before_access(a, n); }
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_read(void**) {}
void __tsan_vptr_update(void**, void*) {}
// The host code's std::atomic (common.cuh) and static guards: sequentially
// consistent, like the operations they stand for at their strongest.
#define SIMT_ATOMIC_HOOKS(bits)                                                                            \
  uint##bits##_t __tsan_atomic##bits##_load(const volatile uint##bits##_t* a, int) {                       \
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                          \
  }                                                                                                       \
  void __tsan_atomic##bits##_store(volatile uint##bits##_t* a, uint##bits##_t v, int) {                    \
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                             \
  }                                                                                                       \
  uint##bits##_t __tsan_atomic##bits##_exchange(volatile uint##bits##_t* a, uint##bits##_t v, int) {       \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                   \
  }                                                                                                       \
  uint##bits##_t __tsan_atomic##bits##_fetch_add(volatile uint##bits##_t* a, uint##bits##_t v, int) {      \
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                    \
  }                                                                                                       \
  uint##bits##_t __tsan_atomic##bits##_fetch_sub(volatile uint##bits##_t* a, uint##bits##_t v, int) {      \
    return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                    \
  }                                                                                                       \
  int __tsan_atomic##bits##_compare_exchange_strong(volatile uint##bits##_t* a, uint##bits##_t* expected,  \
                                                   uint##bits##_t desired, int, int) {                     \
    return __atomic_compare_exchange_n(a, expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);   \
  }                                                                                                       \
  int __tsan_atomic##bits##_compare_exchange_weak(volatile uint##bits##_t* a, uint##bits##_t* expected,    \
                                                 uint##bits##_t desired, int, int) {                       \
    return __atomic_compare_exchange_n(a, expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);   \
  }
SIMT_ATOMIC_HOOKS(8)
SIMT_ATOMIC_HOOKS(16)
SIMT_ATOMIC_HOOKS(32)
SIMT_ATOMIC_HOOKS(64)
#undef SIMT_ATOMIC_HOOKS
void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
}  // extern "C"

// ---- The CUDA runtime calls of csrc/bindings/cuda_module.cpp ----------------
extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = simt::g_last_error;
  simt::g_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

// A small device: a persistent grid of this many blocks still loops over rows.
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = 3; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = simt::kMaxSharedOptin; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = simt::kSharedPerSm; return cudaSuccess;
    case cudaDevAttrReservedSharedMemoryPerBlock: *value = simt::kReservedSharedPerBlock; return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}

// Static shared memory is laid out only when a block declares it, so
// sharedSizeBytes is 0: the kernels may ask for the whole opt-in limit.
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, const void* func) {
  if (func == nullptr) return cudaErrorInvalidValue;
  *attr = cudaFuncAttributes{};
  attr->maxThreadsPerBlock = simt::kMaxThreadsPerBlock;
  attr->maxDynamicSharedSizeBytes = static_cast<int>(simt::kMaxDynamicShared);
  return cudaSuccess;
}

// Blocks of `block_size` threads and `dynamic_smem` bytes that fit on an SM
// by threads and shared memory (registers are not modelled).
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* num_blocks, const void* func, int block_size,
                                                          size_t dynamic_smem) {
  if (func == nullptr || block_size < 1 || block_size > simt::kMaxThreadsPerBlock) return cudaErrorInvalidValue;
  int n = std::min(simt::kMaxBlocksPerSm, simt::kMaxThreadsPerSm / block_size);
  n = std::min<int64_t>(n, simt::kSharedPerSm / (static_cast<int64_t>(dynamic_smem) + simt::kReservedSharedPerBlock));
  *num_blocks = n;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (func == nullptr || attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || value > simt::kMaxSharedOptin) return cudaErrorInvalidValue;
  simt::dynamic_smem_limits()[func] = static_cast<size_t>(value);
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    default: return "unknown error";
  }
}

}  // extern "C"
