// CUDA forward kernel of the row-statistics primitive: one block per row.
//
// One read of the row. Each thread walks its columns in 16-byte packs
// keeping an online (max, sum-exp) pair; per pack the hot path is a max, one
// exp and one add per column, and the pack max also gates the top-k: the
// block keeps one sorted list per row and its k-th key as the threshold of
// every thread (forward_row_threshold_kernel, below). With kWithGrad the
// same kernel also writes the single-pass gradient; with pieces > 1 (few
// rows: launch.h, RowSplit) a block takes one piece of a row and leaves its
// statistics to merge_pieces_kernel. The (max, sum) pairs are merged by warp
// shuffles and one shared step, and thread 0 draws from the k_eff
// candidates (row_math.h) and writes the four outputs. Offsets of rows are
// int64; columns inside a row are int32 (V < 2^31).
#include <climits>
#include <limits>
#include <type_traits>

#include "common.cuh"
#include "launch.h"
#include "row_grad.cuh"

namespace cringe {
namespace cuda {
namespace {

// Threads of the two-pass forward's blocks (4 blocks per SM fit its 64
// registers) and of float64's single pass.
constexpr int kMaxThreads = 256;

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

// Adds the kN columns of one 16-byte pack (float accumulation) to the
// running (max, sum-exp) and returns the pack max (NaN ignored), which the
// caller also uses as its top-k gate. Per column: one max, one exp on the SFU
// and one add (a pairwise sum: a short dependency chain); the running max
// moves, with a rescale, only when the pack max passes it. `shift` mirrors
// st.shift() in a register.
template <int kN>
__device__ __forceinline__ float lse_add_pack(LseState<float>& st, float& shift, const float (&x)[kN]) {
  float pm = x[0];
#pragma unroll
  for (int e = 1; e < kN; ++e) pm = max_ignoring_nan(pm, x[e]);
  if (pm > st.m) {
    st.raise_to(pm, FastExp());
    shift = st.shift();
  }
  const float nsl = -shift * 1.4426950408889634f;
  float t[kN];
#pragma unroll
  for (int e = 0; e < kN; ++e) t[e] = exp_shifted_ftz(x[e], nsl);
#pragma unroll
  for (int w = 1; w < kN; w *= 2) {
#pragma unroll
    for (int e = 0; e + w < kN; e += 2 * w) t[e] += t[e + w];
  }
  st.s += t[0];
  return pm;
}

// The outputs of a row no kernel streams: 0 for an ignored row, NaN for a
// target out of range (value checks off), and no sample.
template <class Acc>
__device__ __forceinline__ void write_skipped_row(const ForwardParams& p, int64_t i, int64_t y) {
  const Acc v = y == p.ignore_index ? Acc(0) : Acc(NAN);
  static_cast<Acc*>(p.lse)[i] = v;
  static_cast<Acc*>(p.target_logit)[i] = v;
  static_cast<Acc*>(p.sample_logit)[i] = v;
  p.sample_index[i] = -1;
}

// Merges every thread's (max, sum-exp) of the row; thread 0 returns the
// row's. One barrier; warp_m and warp_s are free again after the next one.
template <class Acc>
__device__ __forceinline__ LseState<Acc> block_lse(LseState<Acc> st, Acc* warp_m, Acc* warp_s) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
  warp_lse(st);
  if (lane == 0) {
    warp_m[warp] = st.m;
    warp_s[warp] = st.s;
  }
  __syncthreads();
  if (warp == 0) {
    st = lane < nwarps ? LseState<Acc>{warp_m[lane], warp_s[lane]} : LseState<Acc>::empty();
    warp_lse(st);
  }
  return st;
}

// ---------------------------------------------------------------------------
// Row-threshold forward.
//
// The block keeps one sorted top-k list per row in shared memory and its
// threshold: the list's k-th key once it holds k candidates, -inf before.
// A column whose key is below the threshold can never enter the top-k, so
// the hot loop offers a 16-byte pack only if its max reaches the threshold
// (or the thread has seen a NaN, whose key is +inf). Offered columns go to a
// shared candidate buffer. One warp merges the buffer into the list, and
// raises the threshold for the whole block, only when a round leaves it
// overfull or deeper than kMergeAt entries, and once at the end of the row
// (finish_offers): a merge is a serial stretch of k_eff warp argmaxes that
// the other warps wait out at a barrier; merging after every round that
// offers anything would take ~10 merges a row at V = 128256, k = 5 against
// ~3 this way (a replay of the offers on random rows). A round whose
// candidates do not fit the buffer
// merges those that do, drops the ones the raised threshold now rules out
// and offers the rest again from registers (each thread tracks its columns
// of the round in a 32-bit mask), so a row of ties takes several passes but
// stays exact.

// Candidate buffer entries. Round 0 starts from a seed threshold
// (round0_seed), so it offers a few dozen columns at V = 128256, k = 5;
// without a seed it would offer every column of the round (8192 for 16-bit
// types) and merge a full buffer, ~7% of the row's instructions.
constexpr int kBufferSlots = 1024;
// Buffered candidates at which a round merges even without an overflow (at
// V = 128256, k = 5 about 3 merges a row instead of 2, and the final merge
// scans ~130 entries instead of ~780).
constexpr int kMergeAt = 128;

template <class Acc>
struct RowTopK {
  Acc buf_keys[kBufferSlots];
  int buf_cols[kBufferSlots];
  Acc list_keys[2][kMaxK];  // the sorted list, double-buffered for the merge
  int list_cols[2][kMaxK];
  int buf_count;  // reservations; those past kBufferSlots were not stored
  int list_n;
  int list_sel;
  Acc threshold;
};

// Warp 0 merges the buffer into the list: min(k, n) rounds in which each
// lane takes its best entry after the previous winner (SPEC order) and the
// warp keeps the best of those. Resets the buffer and sets the threshold.
template <class Acc>
__device__ void merge_candidates(RowTopK<Acc>& sh, int k_eff, int lane) {
  const int cur = sh.list_sel;
  const int n_old = sh.list_n;
  const int n_buf = sh.buf_count < kBufferSlots ? sh.buf_count : kBufferSlots;
  const int n = n_old + n_buf;
  const int m = k_eff < n ? k_eff : n;
  Acc pk = pos_inf<Acc>();  // every entry comes after (+inf, -1)
  int pc = -1;
  for (int r = 0; r < m; ++r) {
    Acc bk = neg_inf<Acc>();
    int bc = INT_MAX;
    for (int j = lane; j < n; j += 32) {
      const bool in_list = j < n_old;
      const Acc kj = in_list ? sh.list_keys[cur][j] : sh.buf_keys[j - n_old];
      const int cj = in_list ? sh.list_cols[cur][j] : sh.buf_cols[j - n_old];
      if (comes_before(pk, pc, kj, cj) && comes_before(kj, cj, bk, bc)) {
        bk = kj;
        bc = cj;
      }
    }
    warp_argmax(bk, bc);
    if (lane == 0) {
      sh.list_keys[1 - cur][r] = bk;
      sh.list_cols[1 - cur][r] = bc;
    }
    pk = bk;
    pc = bc;
  }
  // Every lane has read list_sel, list_n and buf_count above; the shuffles
  // in warp_argmax order execution, not shared memory, and with m == 0 there
  // are none (compute-sanitizer's racecheck, H100: 210 hazards without this).
  __syncwarp();
  if (lane == 0) {
    sh.list_sel = 1 - cur;
    sh.list_n = m;
    sh.buf_count = 0;
    sh.threshold = m == k_eff ? sh.list_keys[1 - cur][m - 1] : neg_inf<Acc>();
  }
}

// The first of `want` consecutive buffer slots for this lane (one shared
// atomic per warp); the slots may lie past the buffer's end.
__device__ __forceinline__ int reserve_slots(int* count, int want, int lane) {
  int incl = want;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int o = __shfl_up_sync(0xffffffffu, incl, d);
    if (lane >= d) incl += o;
  }
  const int total = __shfl_sync(0xffffffffu, incl, 31);
  int base = 0;
  if (lane == 31 && total > 0) base = atomicAdd(count, total);
  return __shfl_sync(0xffffffffu, base, 31) + incl - want;
}

// A lower bound of the k_eff-th largest non-target key of the row (or
// piece), from each thread's `unit`: the max of the columns it has read so
// far (NaN ignored), the threads' columns being disjoint. Each warp takes
// the j-th largest of its lanes' units, j = ceil((k_eff + 1) / warps), and
// the block the smallest of those: then at
// least k_eff + 1 disjoint units hold a column at or above the seed, and at
// most one of them holds the target column, so k_eff non-target columns
// reach it. A column below the seed can never enter the top-k, so round 0
// offers only the columns at or above it (a few dozen instead of the whole
// round). -inf when the warps cannot hold k_eff + 1 units. One barrier;
// `warp_seed` is free again after the caller's next one.
template <class Acc, class Key>
__device__ __forceinline__ Acc round0_seed(Acc unit, int k_eff, int lane, Key* warp_seed) {
  const int nwarps = blockDim.x >> 5;  // a power of two, at least 32 threads
  const int j = (k_eff + nwarps) / nwarps;
  // On order-preserving ints (for float one redux.sync a step on sm_80+,
  // and few registers: the plain kernel has none to spare under its 64); a
  // removed lane holds the type's minimum, below every key.
  const Key floor = ordered_int(neg_inf<Acc>());
  const Key removed = std::numeric_limits<Key>::min();
  Key v = unit == unit ? ordered_int(unit) : floor;
  Key m = floor;
  if (j <= 32) {
    for (int r = 0; r < j; ++r) {
      m = warp_max_int(v);
      // The lowest lane holding the maximum drops out; ties count once each.
      const unsigned holders = __ballot_sync(0xffffffffu, v == m);
      if (((holders >> lane) & 1u) && (holders & ((1u << lane) - 1u)) == 0u) v = removed;
    }
    m = m > floor ? m : floor;
  }
  if (lane == 0) warp_seed[threadIdx.x >> 5] = m;
  __syncthreads();
  Key seed = warp_seed[0];
  for (int w = 1; w < nwarps; ++w) seed = warp_seed[w] < seed ? warp_seed[w] : seed;
  return from_ordered_int<Acc>(seed);
}

// Offers this thread's pending candidates of a round to the buffer, merging
// only while some do not fit, the buffer is past kMergeAt or `merge_now`
// asks for one merge (the rest wait for finish_offers). Bit b of
// `pending` stands for candidate b, whose (key, column) is key_col(b); kBits
// is a constant so that the loops unroll and the round's registers are
// never indexed at run time. One barrier when everything fits.
template <int kBits, class Acc, class KeyCol>
__device__ __forceinline__ void offer_round(RowTopK<Acc>& sh, uint32_t pending, int k_eff, int lane, KeyCol key_col,
                                            bool merge_now = false) {
  for (;;) {
    // Most warps offer nothing in most rounds: skip the scan's shuffles.
    const int want = __popc(pending);
    int slot = 0;
    if (__any_sync(0xffffffffu, want != 0)) slot = reserve_slots(&sh.buf_count, want, lane);
    // The lane whose slots hold entry kMergeAt asks for a merge, so that the
    // threshold tightens before the buffer is deep (reservations tile the
    // buffer, so exactly one lane holds it).
    const bool deep = want > 0 && slot <= kMergeAt && slot + want > kMergeAt;
    // Unrolled, the bit loop costs ~5 instructions a bit even with nothing
    // pending: as many as the columns' own work; most threads skip it.
    if (pending != 0) {
#pragma unroll
      for (int b = 0; b < kBits; ++b) {
        if (((pending >> b) & 1u) && slot < kBufferSlots) {
          Acc key;
          int col;
          key_col(b, key, col);
          sh.buf_keys[slot] = key;
          sh.buf_cols[slot] = col;
          ++slot;
          pending &= ~(1u << b);
        }
      }
    }
    if (!__syncthreads_or(pending != 0 || deep || merge_now)) return;
    if ((threadIdx.x >> 5) == 0) merge_candidates(sh, k_eff, lane);
    __syncthreads();
    merge_now = false;
    // What the raised threshold rules out is dropped, the rest offered again.
    const Acc thr = sh.threshold;
    if (pending != 0) {
#pragma unroll
      for (int b = 0; b < kBits; ++b) {
        if ((pending >> b) & 1u) {
          Acc key;
          int col;
          key_col(b, key, col);
          if (key < thr) pending &= ~(1u << b);
        }
      }
    }
  }
}

// Merges what the rounds left in the buffer. Every thread calls it after its
// last offer_round of the row; the caller's next barrier (block_lse) orders
// the merge before the list is read.
template <class Acc>
__device__ __forceinline__ void finish_offers(RowTopK<Acc>& sh, int k_eff, int lane) {
  __syncthreads();  // the last round's candidates are stored
  // Every lane of warp 0 reads the count before any can reset it (the vote
  // waits for all), so the warp agrees on whether to merge.
  if ((threadIdx.x >> 5) == 0 && __any_sync(0xffffffffu, sh.buf_count > 0)) merge_candidates(sh, k_eff, lane);
}

// kWithGrad: also the single-pass gradient (ForwardParams::lse_weight): once
// the row's lse is known the block sweeps the row again, just read, so
// mostly from L2 (the persistent grid keeps few rows in flight: 2 x 132 x
// 250 KB for bf16 V = 128256 on an H100, inside its 50 MB L2), from its end
// (read last, so still there), and writes lse_weight * exp(x - lse). With
// `cache_packs` > 0 the first pass also stores the row's first packs in
// dynamic shared memory, and the sweep reads those from there
// (SinglePassShape::cache_bytes). Up to 512 threads (16 KB of loads in
// flight per thread round), with no register cap (~79 registers for bf16,
// so 3 blocks of 256 threads or 2 of 512 fit an SM); float64 (gradcheck,
// not speed) keeps 256. The plain kernel: 256 threads, 4 blocks per SM
// (<= 64 registers).
template <DType D, bool kWithGrad>
constexpr int row_threshold_max_threads() {
  return kWithGrad && !std::is_same<typename Types<D>::Acc, double>::value ? 512 : kMaxThreads;
}
template <DType D, bool kWithGrad>
constexpr int row_threshold_min_blocks() {
  return kWithGrad || std::is_same<typename Types<D>::Acc, double>::value ? 1 : kPieceBlocksPerSm;
}

// With pieces > 1 the block takes piece `item % pieces` of row `item /
// pieces`: its range of packs, and for piece 0 also the head and tail
// columns; it writes the piece's (max, sum-exp) and its sorted top-k list
// (the best k_eff of its columns, padded with (-inf, INT_MAX)) to the
// workspace instead of the row's outputs.
// kStaged (the single pass for long rows, launch.h single_pass_shape):
// 16-byte packs of dynamic shared memory per thread, two rounds.
constexpr int kStagePacks = 2 * kUnroll;

template <DType D, bool kWithGrad, bool kStaged>
__global__ void __launch_bounds__(row_threshold_max_threads<D, kWithGrad>(), row_threshold_min_blocks<D, kWithGrad>())
    forward_row_threshold_kernel(const ForwardParams p, const int k_eff, const RowSplit split,
                                 const int cache_packs) {
  using Ty = Types<D>;
  using S = typename Ty::S;
  using Acc = typename Ty::Acc;
  constexpr int kN = Pack<S>::kN;
  constexpr int kRoundBits = kUnroll * kN;
  static_assert(kRoundBits <= 32, "one mask bit per column of a round");
  static_assert(kWithGrad || !kStaged, "only the single pass is staged");

  __shared__ RowTopK<Acc> sh;
  __shared__ Acc warp_m[32];
  __shared__ Acc warp_s[32];
  __shared__ Acc row_lse;  // kWithGrad: the row's lse for every thread
  __shared__ decltype(ordered_int(Acc(0))) warp_seed[32];  // round0_seed
  // Dynamic shared memory: kStaged, two rounds of packs (the one being read
  // and the next, in flight); then, kWithGrad, the row's first cache_packs
  // packs.
  CRINGE_DYNAMIC_SHARED(dynamic_raw);
  Pack<S>* const stage = reinterpret_cast<Pack<S>*>(dynamic_raw);
  Pack<S>* const cache = stage + (kStaged ? kStagePacks * blockDim.x : 0);

  const int V = static_cast<int>(p.V);
  const int64_t N = p.B * p.T;
  const int lane = threadIdx.x & 31;
  const int T = blockDim.x;
  Acc* lse_out = static_cast<Acc*>(p.lse);
  Acc* tl_out = static_cast<Acc*>(p.target_logit);
  Acc* sl_out = static_cast<Acc*>(p.sample_logit);
  const int pieces = kWithGrad ? 1 : split.pieces;
  const PieceLayout layout = piece_layout(sizeof(Acc), N * pieces, k_eff);
  unsigned char* ws = static_cast<unsigned char*>(split.workspace);

  if (threadIdx.x == 0) {
    sh.buf_count = 0;
    sh.list_n = 0;
    sh.list_sel = 0;
    sh.threshold = neg_inf<Acc>();
  }
  __syncthreads();

  for (int64_t item = blockIdx.x; item < N * pieces; item += gridDim.x) {
    const int64_t i = item / pieces;
    const int piece = static_cast<int>(item % pieces);
    const int64_t y = p.target[i];
    auto grad_row = [&] { return static_cast<S*>(p.grad) + (i / p.T) * p.grad_stride_b + (i % p.T) * p.grad_stride_t; };
    if (y == p.ignore_index || y < 0 || y >= V) {  // block-uniform: no barrier skipped unevenly
      if (pieces == 1 && threadIdx.x == 0) write_skipped_row<Acc>(p, i, y);  // else merge_pieces_kernel
      // Ignored rows get zeros now; a target out of range leaves the row to
      // the backward (it writes every row it was not promised).
      if constexpr (kWithGrad) {
        if (y == p.ignore_index) {
          write_row_grad<D>(logits_row<S>(p, i), grad_row(), V,
                            RowGrad<Acc>{Acc(0), Acc(0), Acc(0), Acc(0), -1, -1, true});
        }
      }
      continue;
    }
    const S* row = logits_row<S>(p, i);
    const int yc = static_cast<int>(y);
    const FastExp ex;
    LseState<Acc> st = LseState<Acc>::empty();

    // Columns outside the 16-byte packs (the unaligned head and the tail;
    // fewer than 2 * kN unless the row is not even element-aligned), in
    // rounds of one column per thread.
    const int head = head_elements(row, V);
    const int packs = (V - head) / kN;
    const int tail = head + packs * kN;
    const int scalars = piece == 0 ? head + (V - tail) : 0;
    for (int base = 0; base < scalars; base += T) {
      const int j = base + threadIdx.x;
      const int col = j < head ? j : tail + (j - head);
      Acc x = Acc(0);
      if (j < scalars) {
        x = Ty::load(row[col]);
        st.push(x, ex);
      }
      if (k_eff > 0) {
        const uint32_t pending = (j < scalars && col != yc && topk_key(x) >= sh.threshold) ? 1u : 0u;
        offer_round<1>(sh, pending, k_eff, lane, [&](int, Acc& key, int& c) {
          key = topk_key(x);
          c = col;
        });
      }
    }

    // The packs [lo, hi) of this piece, kUnroll per thread and round.
    const Pack<S>* body = reinterpret_cast<const Pack<S>*>(row + head);
    Acc shift = st.shift();  // kept in a register
    int lo, hi;
    piece_packs(packs, piece, pieces, lo, hi);
    const int rounds = (hi - lo + kUnroll * T - 1) / (kUnroll * T);
    // kStaged: round r's packs are copied (cp.async) into stage half r % 2
    // while round r - 1 computes, offers and meets its barriers, so the
    // barriers do not drain the loads in flight. Each thread copies and
    // later reads only its own slots, so its own wait suffices; a half is
    // rewritten only in the round after next, so the round reads its packs
    // from there where it uses them instead of holding them in registers.
    auto start_round = [&](int r) {
      const int q = lo + r * kUnroll * T + threadIdx.x;
      Pack<S>* half = stage + (r & 1) * kUnroll * T + threadIdx.x;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (q + u * T < hi) cp_async16(half + u * T, body + q + u * T);
      }
      cp_async_commit();
    };
    if (kStaged && rounds > 0) start_round(0);
    for (int r = 0; r < rounds; ++r) {
      const int q0 = lo + r * kUnroll * T + threadIdx.x;
      Pack<S> pk[kUnroll];
      const Pack<S>* half = stage + (r & 1) * kUnroll * T + threadIdx.x;
      if constexpr (kStaged) {
        // The next round's copies go out first; an empty group in the last
        // round keeps "all but the newest group landed" meaning round r.
        if (r + 1 < rounds) {
          start_round(r + 1);
        } else {
          cp_async_commit();
        }
        cp_async_wait<1>();
      } else {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (q0 + u * T < hi) pk[u] = body[q0 + u * T];
        }
      }
      // Pack u of this round (kStaged: one 16-byte shared load where a whole
      // pack is used, not one a column) and its column e alone.
      auto pack = [&](int u) -> Pack<S> {
        if constexpr (kStaged) {
          return half[u * T];
        } else {
          return pk[u];
        }
      };
      auto elem = [&](int u, int e) -> S {
        if constexpr (kStaged) {
          return half[u * T].v[e];
        } else {
          return pk[u].v[e];
        }
      };
      Acc pmax[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        pmax[u] = neg_inf<Acc>();
        if (q0 + u * T >= hi) continue;
        Acc x[kN];
        unpack<D>(pack(u), x);
        if constexpr (!std::is_same<Acc, float>::value) {
          Acc pm = x[0];
#pragma unroll
          for (int e = 0; e < kN; ++e) {
            pm = max_ignoring_nan(pm, x[e]);
            st.push(x[e], ex);  // float64: the accurate path
          }
          pmax[u] = pm;
        } else {
          pmax[u] = lse_add_pack(st, shift, x);
        }
      }
      if constexpr (kWithGrad) {
        // Each thread stores packs it will read itself in the sweep (same
        // index modulo blockDim): no barrier needed between the two.
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (q0 + u * T < hi && q0 + u * T < cache_packs) {
            cache[q0 + u * T] = pack(u);
          }
        }
      }
      if (k_eff == 0) continue;
      // The columns of this round that may enter the top-k. The pack max
      // includes the target column, so the gate opens too often, never too
      // rarely; a NaN (key +inf) has turned s NaN and opens every pack.
      Acc thr = sh.threshold;
      // Bit u * kN + e: column e of pack u is at or above thr (the target
      // excluded); only the packs `open` lets through are unpacked again.
      auto gated = [&](Acc t, auto open) {
        uint32_t bits = 0;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (q0 + u * T < hi && open(u)) {
            Acc x[kN];
            unpack<D>(pack(u), x);
#pragma unroll
            for (int e = 0; e < kN; ++e) {
              const int col = head + (q0 + u * T) * kN + e;
              if (col != yc && topk_key(x[e]) >= t) bits |= 1u << (u * kN + e);
            }
          }
        }
        return bits;
      };
      uint32_t pending;
      if (r == 0) {
        // Round 0 starts from its seed and ends with a merge, which sets
        // the threshold to the round's k_eff-th key for the rounds after.
        // A thread's unit is its running max: the max of its columns so far
        // (round 0 and the head/tail ones), NaN ignored. The round's packs
        // are checked column by column, so the pack maxima are dead here
        // (under the 64-register cap of the plain kernel they spilled).
        const Acc seed = round0_seed(st.m, k_eff, lane, warp_seed);
        if (seed > thr) thr = seed;
        if (threadIdx.x == 0) sh.threshold = thr;  // read again only after offer_round's barrier
        pending = gated(thr, [](int) { return true; });
      } else {
        const bool nan_seen = st.s != st.s;
        pending = gated(thr, [&](int u) { return pmax[u] >= thr || nan_seen; });
      }
      offer_round<kRoundBits>(
          sh, pending, k_eff, lane,
          [&](int b, Acc& key, int& col) {
            key = topk_key(Ty::load(elem(b / kN, b % kN)));
            col = head + (q0 + (b / kN) * T) * kN + b % kN;
          },
          r == 0);
    }
    if (k_eff > 0) finish_offers(sh, k_eff, lane);

    st = block_lse(st, warp_m, warp_s);
    if (threadIdx.x == 0) {
      const int sel = sh.list_sel;
      if (pieces > 1) {
        reinterpret_cast<Acc*>(ws + layout.m)[item] = st.m;
        reinterpret_cast<Acc*>(ws + layout.s)[item] = st.s;
        Acc* keys = reinterpret_cast<Acc*>(ws + layout.keys) + item * k_eff;
        int* cols = reinterpret_cast<int*>(ws + layout.cols) + item * k_eff;
        // Not unrolled: the unrolled loop kept an offset live across the
        // whole row, which spilled (sm_90, float32) once round 0 took the seed.
#pragma unroll 1
        for (int j = 0; j < k_eff; ++j) {  // a short piece may hold fewer than k_eff
          keys[j] = j < sh.list_n ? sh.list_keys[sel][j] : neg_inf<Acc>();
          cols[j] = j < sh.list_n ? sh.list_cols[sel][j] : INT_MAX;
        }
      } else {
        lse_out[i] = st.lse();
        if constexpr (kWithGrad) row_lse = st.lse();
        tl_out[i] = Ty::load(row[yc]);
        if (k_eff > 0) {
          // Every non-target column was offered while the list was short, so
          // it holds k_eff candidates.
          const int col = sh.list_cols[sel][draw_position(sh.list_keys[sel], k_eff, 1, p.uniform[i])];
          p.sample_index[i] = col;
          sl_out[i] = Ty::load(row[col]);
        } else {
          p.sample_index[i] = -1;
          sl_out[i] = Acc(0);
        }
      }
      sh.list_n = 0;
      sh.threshold = neg_inf<Acc>();
    }
    // The list and the warp partials are reused by the next row.
    __syncthreads();
    if constexpr (kWithGrad) {
      // Same formula and rounding as the backward kernel's dense term.
      const Acc w = static_cast<const Acc*>(p.lse_weight)[i];
      // From the row's end: L2 turns over in ~17 us at 3 TB/s (50 MB), a
      // row's first pass takes ~70 us a block, so only the last part read
      // is still there; swept first, it is read before it goes too (the
      // start is the shared-memory cache's).
      write_row_grad<D, true>(row, grad_row(), V, RowGrad<Acc>{w, row_lse, Acc(0), Acc(0), -1, -1, false}, 0, 1,
                              cache, cache_packs);
    }
  }
}

// Merges the pieces of each row (forward_row_threshold_kernel with pieces >
// 1), one warp per row: lane j holds piece j's (max, sum-exp) and the head
// of its sorted list; k_eff rounds of warp argmax over the heads give the
// row's top-k in SPEC order (the pieces' columns are disjoint and hold at
// least k_eff real candidates between them, so the (-inf, INT_MAX) padding
// never wins), then the draw and the outputs as in the one-block kernels.
template <DType D>
__global__ void __launch_bounds__(32) merge_pieces_kernel(const ForwardParams p, const int k_eff, const RowSplit split) {
  using Ty = Types<D>;
  using S = typename Ty::S;
  using Acc = typename Ty::Acc;
  __shared__ Acc cand_keys[kMaxK];
  __shared__ int cand_cols[kMaxK];

  const int V = static_cast<int>(p.V);
  const int64_t N = p.B * p.T;
  const int lane = threadIdx.x;
  const int pieces = split.pieces;
  const PieceLayout layout = piece_layout(sizeof(Acc), N * pieces, k_eff);
  const unsigned char* ws = static_cast<const unsigned char*>(split.workspace);
  const Acc* piece_m = reinterpret_cast<const Acc*>(ws + layout.m);
  const Acc* piece_s = reinterpret_cast<const Acc*>(ws + layout.s);
  const Acc* piece_keys = reinterpret_cast<const Acc*>(ws + layout.keys);
  const int* piece_cols = reinterpret_cast<const int*>(ws + layout.cols);

  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const int64_t y = p.target[i];
    if (y == p.ignore_index || y < 0 || y >= V) {  // warp-uniform
      if (lane == 0) write_skipped_row<Acc>(p, i, y);
      continue;
    }
    const int64_t item = i * pieces + lane;  // this lane's piece
    const bool has_piece = lane < pieces;
    LseState<Acc> st = has_piece ? LseState<Acc>{piece_m[item], piece_s[item]} : LseState<Acc>::empty();
    warp_lse(st);
    const S* row = logits_row<S>(p, i);
    if (k_eff > 0) {
      int head = 0;
      for (int r = 0; r < k_eff; ++r) {
        const bool live = has_piece && head < k_eff;
        Acc key = live ? piece_keys[item * k_eff + head] : neg_inf<Acc>();
        int col = live ? piece_cols[item * k_eff + head] : INT_MAX;
        const int own = col;
        warp_argmax(key, col);
        if (live && own == col) ++head;
        if (lane == 0) {
          cand_keys[r] = key;
          cand_cols[r] = col;
        }
      }
      __syncwarp();
    }
    if (lane == 0) {
      static_cast<Acc*>(p.lse)[i] = st.lse();
      static_cast<Acc*>(p.target_logit)[i] = Ty::load(row[y]);
      const int col = k_eff > 0 ? cand_cols[draw_position(cand_keys, k_eff, 1, p.uniform[i])] : -1;
      p.sample_index[i] = col;
      static_cast<Acc*>(p.sample_logit)[i] = col >= 0 ? Ty::load(row[col]) : Acc(0);
    }
    __syncwarp();  // cand_* are reused by the next row
  }
}

// The single pass: a persistent grid of at most shape.blocks_per_sm blocks
// per SM, so that the rows in flight stay on chip until their sweep, each
// block keeping up to shape.cache_bytes of its row in shared memory (after
// the two halves of cp.async rounds, kStaged). The cache is clamped to what
// a block may have and to its share of the SM's shared memory, and the
// blocks per SM to what is resident at once (a block that waited for
// another to finish all its rows would double the time). Staging is what
// lets few rows in flight (so that their second read still hits L2) keep
// enough loads in flight (launch.h, single_pass_shape).
template <DType D, bool kStaged>
cudaError_t launch_kernel_single_pass(const ForwardParams& p, int k_eff, SinglePassShape shape, int64_t packs,
                                      cudaStream_t stream) {
  using S = typename Types<D>::S;
  const void* kernel = reinterpret_cast<const void*>(&forward_row_threshold_kernel<D, true, kStaged>);
  DeviceLimits dev{};
  cudaError_t err = current_device_limits(dev);
  if (err != cudaSuccess) return err;
  constexpr int kCap = row_threshold_max_threads<D, true>();
  const int threads = threads_for(shape.threads < kCap ? shape.threads : kCap, packs);
  const int64_t stage_bytes = kStaged ? int64_t(kStagePacks) * threads * static_cast<int64_t>(sizeof(Pack<S>)) : 0;

  cudaFuncAttributes attrs{};
  err = cudaFuncGetAttributes(&attrs, kernel);
  if (err != cudaSuccess) return err;
  int64_t cache_packs = 0;
  if (shape.cache_bytes > 0) {
    const int64_t fixed = static_cast<int64_t>(attrs.sharedSizeBytes) + stage_bytes;
    int64_t room = dev.smem_optin - fixed;
    const int64_t share = dev.smem_per_sm / shape.blocks_per_sm - fixed - dev.smem_reserved;
    if (share < room) room = share;
    cache_packs = (shape.cache_bytes < room ? shape.cache_bytes : room) / static_cast<int64_t>(sizeof(Pack<S>));
    if (cache_packs > packs) cache_packs = packs;
    if (cache_packs < 0) cache_packs = 0;
  }
  const size_t dynamic_bytes = static_cast<size_t>(stage_bytes + cache_packs * int64_t(sizeof(Pack<S>)));
  // Without opting in, a block's static and dynamic shared memory together
  // must stay within 48 KB (float64's 256 threads of stages, its larger
  // static arrays and a 5 KB cache come to 51 KB).
  if (static_cast<int64_t>(attrs.sharedSizeBytes) + static_cast<int64_t>(dynamic_bytes) > 48 * 1024) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dynamic_bytes));
    if (err != cudaSuccess) return err;
  }
  int resident = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, threads, dynamic_bytes);
  if (err != cudaSuccess) return err;
  const int64_t per_sm_blocks = shape.blocks_per_sm < resident ? shape.blocks_per_sm : (resident > 0 ? resident : 1);
  const int64_t N = p.B * p.T;
  const int64_t grid = static_cast<int64_t>(dev.sms) * per_sm_blocks;
  CRINGE_LAUNCH(static_cast<unsigned>(N < grid ? N : grid), threads, dynamic_bytes, stream,
                forward_row_threshold_kernel<D, true, kStaged>)(p, k_eff, RowSplit{}, static_cast<int>(cache_packs));
  return cudaGetLastError();
}

template <DType D>
cudaError_t launch(const ForwardParams& p, int k_eff, SinglePassShape shape, RowSplit split, cudaStream_t stream) {
  using S = typename Types<D>::S;
  const int64_t N = p.B * p.T;
  const unsigned grid = static_cast<unsigned>(N < INT_MAX ? N : INT_MAX);
  const int64_t packs = (p.V + Pack<S>::kN - 1) / Pack<S>::kN;
  if (p.grad != nullptr) {
    if (shape.staged) return launch_kernel_single_pass<D, true>(p, k_eff, shape, packs, stream);
    return launch_kernel_single_pass<D, false>(p, k_eff, shape, packs, stream);
  }
  if (split.pieces > 1) {
    const int64_t items = N * split.pieces;
    CRINGE_LAUNCH(static_cast<unsigned>(items < INT_MAX ? items : INT_MAX),
                  threads_for(kMaxThreads, packs / split.pieces), 0, stream,
                  forward_row_threshold_kernel<D, false, false>)(p, k_eff, split, 0);
    CRINGE_LAUNCH(grid, 32, 0, stream, merge_pieces_kernel<D>)(p, k_eff, split);
    return cudaGetLastError();
  }
  CRINGE_LAUNCH(grid, threads_for(kMaxThreads, packs), 0, stream, forward_row_threshold_kernel<D, false, false>)(
      p, k_eff, split, 0);
  return cudaGetLastError();
}

cudaError_t launch_checked(const ForwardParams& p, cudaStream_t stream, SinglePassShape shape, RowSplit split) {
  if (p.B < 0 || p.T < 0 || p.V < 2 || p.V > kMaxV || p.k < 0) return cudaErrorInvalidValue;
  if (split.pieces < 1 || split.pieces > kMaxPieces || (split.pieces > 1 && split.workspace == nullptr) ||
      (split.pieces > 1 && p.grad != nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (shape.threads < 32 || shape.threads > 512 || (shape.threads & (shape.threads - 1)) != 0 ||
      shape.blocks_per_sm < 1 || shape.blocks_per_sm > 32 || shape.cache_bytes < 0) {
    return cudaErrorInvalidValue;
  }
  if ((p.grad == nullptr) != (p.lse_weight == nullptr)) return cudaErrorInvalidValue;
  const int64_t k_eff = p.k < p.V - 1 ? p.k : p.V - 1;
  if (k_eff > kMaxK || (k_eff > 0 && p.uniform == nullptr)) return cudaErrorInvalidValue;
  if (p.B * p.T == 0) return cudaSuccess;
  const int k = static_cast<int>(k_eff);
  switch (p.dtype) {
    case DType::kFloat32: return launch<DType::kFloat32>(p, k, shape, split, stream);
    case DType::kFloat64: return launch<DType::kFloat64>(p, k, shape, split, stream);
    case DType::kFloat16: return launch<DType::kFloat16>(p, k, shape, split, stream);
    case DType::kBFloat16: return launch<DType::kBFloat16>(p, k, shape, split, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_forward(const ForwardParams& p, cudaStream_t stream, RowSplit split) {
  return launch_checked(p, stream, single_pass_shape(p.V * dtype_bytes(p.dtype)), split);
}

cudaError_t launch_single_pass(const ForwardParams& p, cudaStream_t stream, SinglePassShape shape) {
  if (p.grad == nullptr) return cudaErrorInvalidValue;
  return launch_checked(p, stream, shape, RowSplit{});
}

}  // namespace cuda
}  // namespace cringe
