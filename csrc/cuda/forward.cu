// CUDA forward kernel of the row-statistics primitive: one block per row.
//
// One read of the row. Each thread walks its columns (16-byte packs where
// aligned) keeping an online (max, sum-exp) pair and a sorted list of its own
// best k_eff non-target columns in shared memory. Per pack the hot path is a
// max, one exp and one add per column: the pack max both raises the running
// max and, against a register threshold (the list's last key), decides
// whether the pack is offered to the list at all. Then:
//   * the (max, sum) pairs are merged by warp shuffles and one shared step,
//   * the per-thread lists are merged by k_eff rounds of a block-wide argmax
//     over the list heads (value desc, column asc: SPEC.md's order),
//   * thread 0 draws from the k_eff candidates (row_math.h) and writes the
//     four outputs.
// Offsets of rows are int64; columns inside a row are int32 (V < 2^31).
#include <climits>
#include <type_traits>

#include "common.cuh"
#include "launch.h"

namespace cringe {
namespace cuda {
namespace {

constexpr int kMaxThreads = 256;
// Shared memory for the per-thread lists; below the 48 KiB a launch gets
// without opting in, with room for the kernel's static arrays.
constexpr int kListBytes = 40 * 1024;

template <class Acc>
__device__ __forceinline__ void warp_argmax(Acc& key, int& col) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const Acc ok = shfl_xor(key, off);
    const int oc = shfl_xor(col, off);
    if (comes_before(ok, oc, key, col)) {
      key = ok;
      col = oc;
    }
  }
}

template <class Acc>
__device__ __forceinline__ void warp_lse(LseState<Acc>& st) {
  const FastExp ex;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    LseState<Acc> o{shfl_xor(st.m, off), shfl_xor(st.s, off)};
    st.merge(o, ex);
  }
}

template <DType D, ForwardGate kGate>
__global__ void __launch_bounds__(kMaxThreads) forward_kernel(const ForwardParams p, const int k_eff) {
  using Ty = Types<D>;
  using S = typename Ty::S;
  using Acc = typename Ty::Acc;

  CRINGE_DYNAMIC_SHARED(smem);
  Acc* list_keys = reinterpret_cast<Acc*>(smem);
  int* list_cols = reinterpret_cast<int*>(list_keys + static_cast<size_t>(k_eff) * blockDim.x);
  __shared__ Acc cand_keys[kMaxK];
  __shared__ int cand_cols[kMaxK];
  __shared__ Acc warp_m[32];  // log-sum-exp partials
  __shared__ Acc warp_s[32];
  __shared__ Acc warp_key[32];  // top-k merge partials (separate: no barrier between the two)
  __shared__ int warp_col[32];

  const int V = static_cast<int>(p.V);
  const int64_t N = p.B * p.T;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
  Acc* lse_out = static_cast<Acc*>(p.lse);
  Acc* tl_out = static_cast<Acc*>(p.target_logit);
  Acc* sl_out = static_cast<Acc*>(p.sample_logit);

  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const int64_t y = p.target[i];
    if (y == p.ignore_index || y < 0 || y >= V) {  // block-uniform: no barrier skipped unevenly
      if (threadIdx.x == 0) {
        const Acc v = y == p.ignore_index ? Acc(0) : Acc(NAN);
        lse_out[i] = v;
        tl_out[i] = v;
        sl_out[i] = v;
        p.sample_index[i] = -1;
      }
      continue;
    }
    const S* row = static_cast<const S*>(p.logits) + (i / p.T) * p.stride_b + (i % p.T) * p.stride_t;
    const int yc = static_cast<int>(y);

    LseState<Acc> st = LseState<Acc>::empty();
    StridedTopK<Acc, int> tk{list_keys + threadIdx.x, list_cols + threadIdx.x, static_cast<int>(blockDim.x), k_eff, 0};
    Acc thr = neg_inf<Acc>();  // tk.threshold(), kept in a register
    const FastExp ex;
    // The exact top-k step of one column: SPEC order, target skipped, NaN as +inf.
    auto offer = [&](int col, Acc x) {
      if (col != yc) {
        const Acc key = topk_key(x);
        if (key > thr || tk.count < k_eff) {
          tk.offer(key, col);
          thr = tk.threshold();
        }
      }
    };
    // The hot loop, per 16-byte pack: a pack max (NaN ignored) raises the
    // running max (rarely), one exp per column is summed without a branch,
    // and the same max gates the top-k: only a pack that may hold a
    // candidate (max above the threshold, list not yet full) or a NaN (s
    // turned NaN) is offered column by column. The gate includes the target
    // column, so it can only open too often, never too rarely.
    Acc shift = Acc(0);  // st.shift(), kept in a register
    walk_row(
        row, V,
        [&](int col0, const Pack<S>& pk) {
          constexpr int kN = Pack<S>::kN;
          Acc x[kN];
#pragma unroll
          for (int e = 0; e < kN; ++e) x[e] = Ty::load(pk.v[e]);
          if constexpr (!std::is_same<Acc, float>::value) {
            // float64: two columns per pack gain nothing from the gate, and
            // the extra live doubles around the (called) exp spill.
#pragma unroll
            for (int e = 0; e < kN; ++e) {
              st.push(x[e], ex);
              if (k_eff > 0) offer(col0 + e, x[e]);
            }
          } else {
            Acc pm = x[0];
#pragma unroll
            for (int e = 1; e < kN; ++e) pm = max_ignoring_nan(pm, x[e]);
            if (pm > st.m) {
              st.raise_to(pm, ex);
              shift = st.shift();
            }
            const float nsl = -shift * 1.4426950408889634f;
            Acc t[kN];
#pragma unroll
            for (int e = 0; e < kN; ++e) t[e] = exp_shifted_ftz(x[e], nsl);
            // Pairwise sum: a short dependency chain per pack.
#pragma unroll
            for (int w = 1; w < kN; w *= 2) {
#pragma unroll
              for (int e = 0; e + w < kN; e += 2 * w) t[e] += t[e + w];
            }
            st.s += t[0];
            bool may_hold = pm > thr || tk.count < k_eff;
            if constexpr (kGate == ForwardGate::kWarp) {
              // Another lane's full list beats every column below its k-th
              // key; a column equal to it may still win on column order, so
              // only a pack strictly below the warp's best bound is skipped.
              // (Every active lane takes part, before any lane branches.)
              const int bound = active_lanes_max(ordered_int(thr));
              may_hold = may_hold && ordered_int(pm) >= bound;
            }
            if (k_eff > 0 && (may_hold || st.s != st.s)) {
#pragma unroll
              for (int e = 0; e < kN; ++e) offer(col0 + e, x[e]);
            }
          }
        },
        [&](int col, S raw) {
          const Acc x = Ty::load(raw);
          st.push(x, ex);
          shift = st.shift();
          if (k_eff > 0) offer(col, x);
        });

    // log-sum-exp of the row.
    warp_lse(st);
    if (lane == 0) {
      warp_m[warp] = st.m;
      warp_s[warp] = st.s;
    }
    __syncthreads();
    if (warp == 0) {
      st = lane < nwarps ? LseState<Acc>{warp_m[lane], warp_s[lane]} : LseState<Acc>::empty();
      warp_lse(st);
      if (lane == 0) {
        lse_out[i] = st.lse();
        tl_out[i] = Ty::load(row[yc]);
      }
    }

    if (k_eff > 0) {
      // k_eff rounds of block argmax over the heads of the per-thread lists.
      int head = 0;
      for (int r = 0; r < k_eff; ++r) {
        Acc hk = head < tk.count ? list_keys[head * blockDim.x + threadIdx.x] : neg_inf<Acc>();
        int hc = head < tk.count ? list_cols[head * blockDim.x + threadIdx.x] : INT_MAX;
        warp_argmax(hk, hc);
        if (lane == 0) {
          warp_key[warp] = hk;
          warp_col[warp] = hc;
        }
        __syncthreads();
        if (warp == 0) {
          hk = lane < nwarps ? warp_key[lane] : neg_inf<Acc>();
          hc = lane < nwarps ? warp_col[lane] : INT_MAX;
          warp_argmax(hk, hc);
          if (lane == 0) {
            cand_keys[r] = hk;
            cand_cols[r] = hc;
          }
        }
        __syncthreads();
        if (head < tk.count && list_cols[head * blockDim.x + threadIdx.x] == cand_cols[r]) ++head;
      }
      if (threadIdx.x == 0) {
        const int col = cand_cols[draw_position(cand_keys, k_eff, 1, p.uniform[i])];
        p.sample_index[i] = col;
        sl_out[i] = Ty::load(row[col]);
      }
    } else if (threadIdx.x == 0) {
      p.sample_index[i] = -1;
      sl_out[i] = Acc(0);
    }
    // The shared arrays are reused by the next row of this block.
    __syncthreads();
  }
}

template <DType D>
cudaError_t launch(const ForwardParams& p, int k_eff, ForwardGate gate, cudaStream_t stream) {
  using Acc = typename Types<D>::Acc;
  using S = typename Types<D>::S;
  const size_t per_thread = static_cast<size_t>(k_eff) * (sizeof(Acc) + sizeof(int));
  int threads = kMaxThreads;
  // Fewer threads for large k (their lists share kListBytes) or short rows.
  while (threads > 32 && static_cast<size_t>(threads) * per_thread > kListBytes) threads /= 2;
  const int64_t packs = (p.V + Pack<S>::kN - 1) / Pack<S>::kN;
  while (threads > 32 && threads / 2 >= packs) threads /= 2;
  const int64_t N = p.B * p.T;
  const unsigned grid = static_cast<unsigned>(N < INT_MAX ? N : INT_MAX);
  const size_t smem = threads * per_thread;
  // float64 walks column by column (no pack gate): one variant is enough.
  if constexpr (!std::is_same<Acc, double>::value) {
    if (gate == ForwardGate::kWarp) {
      CRINGE_LAUNCH(grid, threads, smem, stream, forward_kernel<D, ForwardGate::kWarp>)(p, k_eff);
      return cudaGetLastError();
    }
  }
  CRINGE_LAUNCH(grid, threads, smem, stream, forward_kernel<D, ForwardGate::kThread>)(p, k_eff);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_forward(const ForwardParams& p, cudaStream_t stream, ForwardGate gate) {
  if (p.B < 0 || p.T < 0 || p.V < 2 || p.V > kMaxV || p.k < 0) return cudaErrorInvalidValue;
  const int64_t k_eff = p.k < p.V - 1 ? p.k : p.V - 1;
  if (k_eff > kMaxK || (k_eff > 0 && p.uniform == nullptr)) return cudaErrorInvalidValue;
  if (p.B * p.T == 0) return cudaSuccess;
  const int k = static_cast<int>(k_eff);
  switch (p.dtype) {
    case DType::kFloat32: return launch<DType::kFloat32>(p, k, gate, stream);
    case DType::kFloat64: return launch<DType::kFloat64>(p, k, gate, stream);
    case DType::kFloat16: return launch<DType::kFloat16>(p, k, gate, stream);
    case DType::kBFloat16: return launch<DType::kBFloat16>(p, k, gate, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace cringe
