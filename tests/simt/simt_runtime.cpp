// Scheduler of the SIMT simulator (simt_host.h) and the few CUDA runtime
// calls the binding and the launchers make, so the simulated module links without libcudart.
//
// Each simulated CUDA thread is a fiber with its own stack. A block's fibers
// run round-robin on the calling OS thread; a fiber runs until it finishes or
// must wait (block barrier, warp operation) and then hands control back. A
// full round in which no fiber arrives anywhere, finishes or is released is
// a deadlock: every waiter is reported and the launch fails.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
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
  std::vector<unsigned char> smem;
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
  std::fill(b.smem.begin(), b.smem.end(), 0xFF);  // NaN in every float type
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
      if (f.done) continue;
      b.running = &f;
      current = &f.ids;
      void* scheduler_fake_stack = nullptr;
      SIMT_START_SWITCH(&scheduler_fake_stack, f.stack, kStackBytes);
      switch_context(b.scheduler, f.ctx);
      SIMT_FINISH_SWITCH(scheduler_fake_stack, nullptr, nullptr);
      if (b.error) break;
    }
    b.running = nullptr;
    current = nullptr;
    if (b.error) std::rethrow_exception(b.error);
    if (b.live > 0 && b.progress == before) throw std::runtime_error(deadlock_report(b));
  }
}

}  // namespace

unsigned char* dynamic_shared() { return g_block->smem.data(); }

int sync_block(int pred, bool reduce_or) {
  Block& b = *g_block;
  const uint64_t gen = b.barrier_generation;
  ++b.progress;
  b.barrier_or |= pred;
  if (++b.barrier_arrived >= b.live) {
    release_barrier(b);
    // Step aside, so that the schedule, not the last arrival, decides who
    // runs first after the barrier.
    yield_waiting("a released __syncthreads");
  } else {
    while (b.barrier_generation == gen) yield_waiting(reduce_or ? "__syncthreads_or" : "__syncthreads");
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
  const uint64_t gen = w.generation;
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
    while (w.generation == gen) yield_waiting(op);
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
  Block b;
  b.smem.assign(dynamic_smem, 0xFF);
  b.body = &body;
  g_block = &b;
  try {
    const Schedule schedule = schedule_from_env();
    for (unsigned i = 0; i < grid.x; ++i) run_block(b, dim3(i), block, grid, schedule);
  } catch (...) {
    g_block = nullptr;
    current = nullptr;
    throw;
  }
  g_block = nullptr;
}

}  // namespace simt

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

// Static shared memory is not known here (it is thread_local storage), so
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
