// Kernels that show what the SIMT simulator checks (tests/test_simt.py): a
// correct block reduction, a warp shuffle with a segment width, and the
// mistakes it must report instead of computing something: warp operations
// in divergent code, a deadlock between a warp operation and a barrier,
// uninitialised shared memory (dynamic, and static in every block), launch
// configurations the hardware refuses, a race that only the schedule
// exposes, a plain read-modify-write that loses updates where atomicAdd
// does not, shared accesses outside every variable, too much static shared
// memory, and (in the AddressSanitizer build) a read past a buffer's end.
// Compiled only for the simulator (CRINGE_SIMT_HOST).
#include <cmath>
#include <cstdio>
#include <exception>

namespace {

constexpr int kBlock = 128;

// Sum of `in` per block, written to out[blockIdx.x]: shuffles within each
// warp, one shared step across the warps.
__global__ void block_sum(const float* in, float* out, int n) {
  __shared__ float partial[kBlock / 32];
  float v = 0.f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) v += in[blockIdx.x * n + j];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) s += partial[w];
    out[blockIdx.x] = s;
  }
}

// out[t] = lane of the value received with xor 1 inside 16-lane segments;
// xor 16 leaves the segment, so each lane keeps its own value.
__global__ void shuffle_width(float* out) {
  const int lane = threadIdx.x % 32;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<float>(lane), 1, 16) +
                     100.f * __shfl_xor_sync(0xffffffffu, static_cast<float>(lane), 16, 16);
}

// Half the warp shuffles while the other half takes a ballot.
__global__ void divergent_warp_ops(float* out) {
  const int lane = threadIdx.x % 32;
  if (lane < 16) {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
  } else {
    out[threadIdx.x] = static_cast<float>(__ballot_sync(0xffffffffu, 1));
  }
}

// Lanes 0-15 wait in a shuffle for lanes 16-31, which wait at the block
// barrier for lanes 0-15: a hang on the hardware.
__global__ void shuffle_barrier_deadlock(float* out) {
  const int lane = threadIdx.x % 32;
  float v = 1.f;
  if (lane < 16) v = __shfl_xor_sync(0xffffffffu, v, 16);
  __syncthreads();
  if (lane >= 16) v = __shfl_xor_sync(0xffffffffu, v, 16);
  out[threadIdx.x] = v;
}

// Reads dynamic shared memory that nothing wrote.
__global__ void read_uninitialised_shared(float* out) {
  CRINGE_DYNAMIC_SHARED(smem);
  out[threadIdx.x] = reinterpret_cast<const float*>(smem)[threadIdx.x];
}

__global__ void noop(float*) {}

// A race: thread 0 writes a shared value that thread 32 reads with no
// barrier in between, so thread 32 sees 1 or the uninitialised NaN
// depending on the schedule.
__global__ void shared_race(float* out) {
  __shared__ float value;
  if (threadIdx.x == 0) value = 1.f;
  if (threadIdx.x == 32) out[0] = value;
}

// out[blockIdx.x * 64 + t] = what thread t finds in a static shared array
// before anything in its block wrote it; then the block writes 1 there.
__global__ void read_static_shared_first(float* out) {
  __shared__ float values[64];
  out[blockIdx.x * 64 + threadIdx.x] = values[threadIdx.x];
  __syncthreads();
  values[threadIdx.x] = 1.f;
}

// Every thread adds 1 to two shared counters: out[0] by a plain
// read-modify-write (a race), out[1] by atomicAdd.
__global__ void count_plain_and_atomic(float* out) {
  __shared__ int plain;
  __shared__ int atomic;
  if (threadIdx.x == 0) {
    plain = 0;
    atomic = 0;
  }
  __syncthreads();
  plain = plain + 1;
  atomicAdd(&atomic, 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    out[0] = static_cast<float>(plain);
    out[1] = static_cast<float>(atomic);
  }
}

// Thread 0 writes element -1 of a shared array.
__global__ void write_before_shared_array(float* out) {
  __shared__ float values[32];
  values[static_cast<int>(threadIdx.x) - 1] = 0.f;
  out[threadIdx.x] = 0.f;
}

// 52 KB of static shared memory: ptxas refuses it.
__global__ void too_much_static_shared(float* out) {
  __shared__ float values[13 * 1024];
  values[threadIdx.x] = 0.f;
  out[threadIdx.x] = values[threadIdx.x];
}

// Reads one element past the end of `in` (n elements): what the ASan build
// must report (test_simt.py).
__global__ void read_past_the_end(const float* in, float* out, int n) {
  if (threadIdx.x == 0) out[0] = in[n];
}

}  // namespace

// Runs self-test `which` and returns the cudaError_t of the launch; a
// failure the simulator reports (deadlock, divergence) returns -1 with its
// message in msg.
extern "C" __attribute__((visibility("default"))) int simt_selftest(int which, float* in, float* out, char* msg,
                                                                     int cap) {
  try {
    switch (which) {
      case 0: CRINGE_LAUNCH(3, kBlock, 0, 0, block_sum)(in, out, 1000); break;
      case 1: CRINGE_LAUNCH(1, 32, 0, 0, shuffle_width)(out); break;
      case 2: CRINGE_LAUNCH(1, 64, 0, 0, divergent_warp_ops)(out); break;
      case 3: CRINGE_LAUNCH(1, 64, 0, 0, shuffle_barrier_deadlock)(out); break;
      case 4: CRINGE_LAUNCH(1, 64, 64 * sizeof(float), 0, read_uninitialised_shared)(out); break;
      case 5: CRINGE_LAUNCH(1, 2048, 0, 0, noop)(out); break;
      case 6: CRINGE_LAUNCH(1, 64, 64 * 1024, 0, noop)(out); break;
      case 7: CRINGE_LAUNCH(1, 32, 0, 0, read_past_the_end)(in, out, 1000); break;
      case 8: CRINGE_LAUNCH(1, 64, 0, 0, shared_race)(out); break;
      case 9: CRINGE_LAUNCH(3, 64, 0, 0, read_static_shared_first)(out); break;
      case 10: CRINGE_LAUNCH(1, 128, 0, 0, count_plain_and_atomic)(out); break;
      case 11: CRINGE_LAUNCH(1, 32, 0, 0, write_before_shared_array)(out); break;
      case 12: CRINGE_LAUNCH(1, 32, 0, 0, too_much_static_shared)(out); break;
      default: return -2;
    }
  } catch (const std::exception& e) {
    std::snprintf(msg, cap, "%s", e.what());
    return -1;
  }
  return static_cast<int>(cudaGetLastError());
}
