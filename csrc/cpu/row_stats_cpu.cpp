// CPU row-statistics kernels: one thread per row, blocks of columns kept in L1.
//
// Forward, per row and per block of kBlock columns: the block max (one SIMD
// pass) drives both the online log-sum-exp rescale and a cheap "can anything
// here enter the top-k?" test, so the scalar heap is touched only for the
// rare columns that beat the current k-th candidate; a second SIMD pass over
// the same (L1-resident) block adds exp(x - m). Backward is one SIMD pass
// writing g_lse * exp(x - lse), then the target and sampled columns are
// patched with values computed before the row is (possibly) overwritten.
// Single pass (ForwardParams::grad): the forward then sweeps each row again,
// from L2, writing lse_weight * exp(x - lse); a backward given the same
// lse_weight patches only the two columns of the rows whose g_lse matches.
#include "row_stats_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "cringe/half_bits.h"
#include "cringe/row_math.h"

namespace cringe {
namespace cpu {
namespace {

constexpr int64_t kBlock = 1024;
constexpr int64_t kChunk = 64;
constexpr int64_t kSortedListMaxK = 64;

// The row functions are built for AVX-512, AVX2 and baseline x86-64 and the
// best one is picked at load time (GCC function multiversioning), so one
// wheel is fast on new CPUs and still runs on old ones.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CRINGE_CPU_CLONES __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define CRINGE_CPU_CLONES
#endif

// exp for the bulk passes, written so that the compiler vectorises it
// (glibc's expf does not vectorise without -ffast-math, which would break
// the NaN/inf semantics). Cody-Waite reduction to |r| <= ln2/2 and a degree-7
// Taylor polynomial: within ~2 ulp of expf. Returns exactly 0 below
// -87.5 (so -inf gives 0), +inf above 88.5 (so +inf gives +inf; a +inf logit
// is summed with shift 0, see LseState) and NaN for NaN.
inline float vexp(float x) {
  const float xc = x < -87.5f ? -87.5f : (x > 88.0f ? 88.0f : x);
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.98412698e-4f;
  p = p * r + 1.38888889e-3f;
  p = p * r + 8.33333333e-3f;
  p = p * r + 4.16666667e-2f;
  p = p * r + 1.66666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float nn = n == n ? n : 0.0f;
  const float scale = bits_to_f32(static_cast<uint32_t>(static_cast<int32_t>(nn) + 127) << 23);
  const float res = p * scale;
  return x < -87.5f ? 0.0f : (x > 88.5f ? std::numeric_limits<float>::infinity() : res);
}

inline double vexp(double x) { return std::exp(x); }

struct VExp {
  template <class A>
  A operator()(A x) const {
    return vexp(x);
  }
};

// Storage type S of the logits and accumulation type Acc per DType.
template <DType D>
struct Types;
template <>
struct Types<DType::kFloat32> {
  using S = float;
  using Acc = float;
  static float load(float v) { return v; }
  static float store(float a) { return a; }
};
template <>
struct Types<DType::kFloat64> {
  using S = double;
  using Acc = double;
  static double load(double v) { return v; }
  static double store(double a) { return a; }
};
template <>
struct Types<DType::kFloat16> {
  using S = uint16_t;
  using Acc = float;
  static float load(uint16_t v) { return f16_to_f32(v); }
  static uint16_t store(float a) { return f32_to_f16(a); }
};
template <>
struct Types<DType::kBFloat16> {
  using S = uint16_t;
  using Acc = float;
  static float load(uint16_t v) { return bf16_to_f32(v); }
  static uint16_t store(float a) { return f32_to_bf16(a); }
};

// A block of the row as Acc: the row itself when no conversion is needed,
// else upcast into `buf`.
template <DType D>
inline const typename Types<D>::Acc* block_as_acc(const typename Types<D>::S* src, int64_t n,
                                                   typename Types<D>::Acc* buf) {
  using Ty = Types<D>;
  if constexpr (std::is_same<typename Ty::S, typename Ty::Acc>::value) {
    (void)n;
    (void)buf;
    return src;
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) buf[j] = Ty::load(src[j]);
    return buf;
  }
}

// The single pass over a non-ignored row with target y in range.
// Always inlined, so it is compiled for each target of forward_row's clones.
template <DType D, class TopK>
__attribute__((always_inline)) inline void forward_row_scan(const ForwardParams& p, int64_t i,
                                                            const typename Types<D>::S* row, int64_t y,
                                                            int64_t k_eff, TopK& topk) {
  using Ty = Types<D>;
  using Acc = typename Ty::Acc;
  Acc* lse_out = static_cast<Acc*>(p.lse);
  Acc* tl_out = static_cast<Acc*>(p.target_logit);
  Acc* sl_out = static_cast<Acc*>(p.sample_logit);
  const int64_t V = p.V;
  alignas(64) Acc buf[kBlock];
  const VExp ex;
  LseState<Acc> st = LseState<Acc>::empty();
  for (int64_t base = 0; base < V; base += kBlock) {
    const int64_t n = std::min(kBlock, V - base);
    const Acc* xb = block_as_acc<D>(row + base, n, buf);
    Acc bm = neg_inf<Acc>();
#pragma omp simd reduction(max : bm)
    for (int64_t j = 0; j < n; ++j) bm = xb[j] > bm ? xb[j] : bm;
    if (k_eff > 0) {
      // Chunks of kChunk columns: only a chunk holding a value above the
      // current k-th candidate is offered to the list one by one.
      for (int64_t c = 0; c < n; c += kChunk) {
        const int64_t m = std::min(kChunk, n - c);
        if (topk.full()) {
          // NaN passes (!(NaN <= thr)), as its top-k key is +inf.
          const Acc thr = topk.threshold();
          int hit = 0;
#pragma omp simd reduction(| : hit)
          for (int64_t j = c; j < c + m; ++j) hit |= !(xb[j] <= thr);
          if (!hit) continue;
        }
        for (int64_t j = c; j < c + m; ++j) {
          if (base + j != y) topk.offer(topk_key(xb[j]), base + j);
        }
      }
    }
    st.raise_to(bm, ex);
    const Acc sh = st.shift();
    Acc bs = Acc(0);
#pragma omp simd reduction(+ : bs)
    for (int64_t j = 0; j < n; ++j) bs += vexp(xb[j] - sh);
    st.s += bs;
  }
  lse_out[i] = st.lse();
  tl_out[i] = Ty::load(row[y]);
  if (k_eff > 0) {
    topk.sort();
    const int64_t col = topk.cols[draw_position(topk.keys, k_eff, 1, p.uniform[i])];
    p.sample_index[i] = col;
    sl_out[i] = Ty::load(row[col]);
  } else {
    p.sample_index[i] = -1;
    sl_out[i] = Acc(0);
  }
}

// out[j] = store(gl * exp(x_j - l)) for the whole row, block by block: the
// backward's dense term, and the single pass's sweep (same formula, so the
// same rounding). Always inlined into the clones that call it.
template <DType D>
inline __attribute__((always_inline)) void write_dense(const typename Types<D>::S* in, typename Types<D>::S* out,
                                                        int64_t V, typename Types<D>::Acc gl,
                                                        typename Types<D>::Acc l) {
  using Ty = Types<D>;
  using Acc = typename Ty::Acc;
  alignas(64) Acc buf[kBlock];
  for (int64_t base = 0; base < V; base += kBlock) {
    const int64_t n = std::min(kBlock, V - base);
    const Acc* xb = block_as_acc<D>(in + base, n, buf);
    typename Ty::S* ob = out + base;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) ob[j] = Ty::store(gl * vexp(xb[j] - l));
  }
}

template <DType D>
inline __attribute__((always_inline)) void write_zeros(typename Types<D>::S* out, int64_t V) {
  const typename Types<D>::S zero = Types<D>::store(typename Types<D>::Acc(0));
#pragma omp simd
  for (int64_t j = 0; j < V; ++j) out[j] = zero;
}

template <DType D>
CRINGE_CPU_CLONES void forward_row(const ForwardParams& p, int64_t i, typename Types<D>::Acc* hk, int64_t* hc) {
  using Ty = Types<D>;
  using S = typename Ty::S;
  using Acc = typename Ty::Acc;
  Acc* lse_out = static_cast<Acc*>(p.lse);
  Acc* tl_out = static_cast<Acc*>(p.target_logit);
  Acc* sl_out = static_cast<Acc*>(p.sample_logit);
  const int64_t V = p.V;
  const int64_t y = p.target[i];
  // Single pass: this row's gradient (ignored rows: zeros; a target out of
  // range is left to the backward).
  S* grad = p.grad == nullptr ? nullptr
                              : static_cast<S*>(p.grad) + (i / p.T) * p.grad_stride_b + (i % p.T) * p.grad_stride_t;
  if (y == p.ignore_index) {
    lse_out[i] = tl_out[i] = sl_out[i] = Acc(0);
    p.sample_index[i] = -1;
    if (grad != nullptr) write_zeros<D>(grad, V);
    return;
  }
  if (y < 0 || y >= V) {  // only reachable with value checks off
    lse_out[i] = tl_out[i] = sl_out[i] = std::numeric_limits<Acc>::quiet_NaN();
    p.sample_index[i] = -1;
    return;
  }
  const S* row = static_cast<const S*>(p.logits) + (i / p.T) * p.stride_b + (i % p.T) * p.stride_t;
  const int64_t k_eff = std::min(p.k, V - 1);
  // A sorted list (the GPU kernel's container, so CPU runs test it too) for
  // the usual small k; a heap, O(log k) per admission, for large k.
  if (k_eff <= kSortedListMaxK) {
    StridedTopK<Acc, int64_t> list{hk, hc, 1, static_cast<int>(k_eff), 0};
    forward_row_scan<D>(p, i, row, y, k_eff, list);
  } else {
    HeapTopK<Acc, int64_t> heap{hk, hc, k_eff, 0};
    forward_row_scan<D>(p, i, row, y, k_eff, heap);
  }
  // The row was just read: the sweep finds it in L2.
  if (grad != nullptr) write_dense<D>(row, grad, V, static_cast<const Acc*>(p.lse_weight)[i], lse_out[i]);
}

template <DType D>
CRINGE_CPU_CLONES void backward_row(const BackwardParams& p, int64_t i) {
  using Ty = Types<D>;
  using S = typename Ty::S;
  using Acc = typename Ty::Acc;
  const int64_t V = p.V;
  const int64_t b = i / p.T, t = i % p.T;
  const S* in = static_cast<const S*>(p.logits) + b * p.stride_b + t * p.stride_t;
  S* out = static_cast<S*>(p.grad) + b * p.grad_stride_b + t * p.grad_stride_t;
  const int64_t y = p.target[i];
  const Acc* lse_weight = static_cast<const Acc*>(p.lse_weight);
  if (y == p.ignore_index) {
    if (lse_weight == nullptr) write_zeros<D>(out, V);  // else the forward wrote them
    return;
  }
  const Acc l = static_cast<const Acc*>(p.lse)[i];
  const Acc gl = static_cast<const Acc*>(p.grad_lse)[i];
  const Acc gt = static_cast<const Acc*>(p.grad_target)[i];
  const Acc gs = static_cast<const Acc*>(p.grad_sample)[i];
  const int64_t s = p.sample_index[i];
  bool has_y = y >= 0 && y < V;
  bool has_s = s >= 0 && s < V;
  // The special columns get their full fp32 value and one rounding, computed
  // before an in-place pass overwrites the inputs.
  Acc vy = Acc(0), vs = Acc(0);
  if (has_y) vy = gl * vexp(Ty::load(in[y]) - l) + gt;
  if (has_s) vs = gl * vexp(Ty::load(in[s]) - l) + gs;
  if (has_y && has_s && s == y) {
    vy += gs;
    has_s = false;
  }
  // After a single-pass forward that guessed this g_lse, the dense term is
  // already there: only the two special columns remain.
  const bool dense_written = lse_weight != nullptr && y >= 0 && y < V && gl == lse_weight[i];
  if (!dense_written) write_dense<D>(in, out, V, gl, l);
  if (has_y) out[y] = Ty::store(vy);
  if (has_s) out[s] = Ty::store(vs);
}

template <DType D>
const char* forward_impl(const ForwardParams& p, void* ws_keys, int64_t* ws_cols, int num_threads) {
  using Acc = typename Types<D>::Acc;
  const int64_t N = p.B * p.T;
  const int64_t k_eff = std::min(p.k, p.V - 1);
  Acc* keys = static_cast<Acc*>(ws_keys);
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 4)
  for (int64_t i = 0; i < N; ++i) {
    const int64_t w = static_cast<int64_t>(omp_get_thread_num()) * k_eff;
    forward_row<D>(p, i, keys + w, ws_cols + w);
  }
  return nullptr;
}

template <DType D>
const char* backward_impl(const BackwardParams& p, int num_threads) {
  const int64_t N = p.B * p.T;
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 4)
  for (int64_t i = 0; i < N; ++i) backward_row<D>(p, i);
  return nullptr;
}

const char* check_sizes(int64_t B, int64_t T, int64_t V, int num_threads) {
  if (B < 0 || T < 0) return "B and T must be >= 0";
  if (V < 2) return "V must be >= 2";
  if (num_threads < 1) return "num_threads must be >= 1";
  return nullptr;
}

}  // namespace

const char* forward(const ForwardParams& p, void* ws_keys, int64_t* ws_cols, int num_threads) {
  if (const char* err = check_sizes(p.B, p.T, p.V, num_threads)) return err;
  if (p.k < 0) return "k must be >= 0";
  if (p.k > 0 && (p.uniform == nullptr || ws_keys == nullptr || ws_cols == nullptr))
    return "uniform and the top-k workspace are required when k > 0";
  switch (p.dtype) {
    case DType::kFloat32: return forward_impl<DType::kFloat32>(p, ws_keys, ws_cols, num_threads);
    case DType::kFloat64: return forward_impl<DType::kFloat64>(p, ws_keys, ws_cols, num_threads);
    case DType::kFloat16: return forward_impl<DType::kFloat16>(p, ws_keys, ws_cols, num_threads);
    case DType::kBFloat16: return forward_impl<DType::kBFloat16>(p, ws_keys, ws_cols, num_threads);
  }
  return "unknown dtype";
}

const char* backward(const BackwardParams& p, int num_threads) {
  if (const char* err = check_sizes(p.B, p.T, p.V, num_threads)) return err;
  switch (p.dtype) {
    case DType::kFloat32: return backward_impl<DType::kFloat32>(p, num_threads);
    case DType::kFloat64: return backward_impl<DType::kFloat64>(p, num_threads);
    case DType::kFloat16: return backward_impl<DType::kFloat16>(p, num_threads);
    case DType::kBFloat16: return backward_impl<DType::kBFloat16>(p, num_threads);
  }
  return "unknown dtype";
}

}  // namespace cpu
}  // namespace cringe
