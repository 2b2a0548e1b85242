// Per-row math shared by the CPU and CUDA kernels (docs/spec.md section 1).
//
// * online max / sum-exp with a NaN- and -inf-safe merge,
// * the candidate order of docs/spec.md (value descending, column ascending) and
//   two streaming top-k containers built on it (a strided sorted list for
//   small k on the GPU, a binary heap for any k on the CPU),
// * the inverse-CDF draw over the ordered candidates.
//
// `Acc` is float (float32/float16/bfloat16 logits) or double (float64).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "macros.h"

namespace cringe {

template <class Acc>
CRINGE_HD Acc neg_inf() {
  return -std::numeric_limits<Acc>::infinity();
}

template <class Acc>
CRINGE_HD Acc pos_inf() {
  return std::numeric_limits<Acc>::infinity();
}

// exp() with the accuracy the draw needs (the same on host and device, so
// CPU and GPU pick the same column for the same u).
CRINGE_HD float precise_exp(float x) { return expf(x); }
CRINGE_HD double precise_exp(double x) { return exp(x); }
CRINGE_HD float precise_log(float x) { return logf(x); }
CRINGE_HD double precise_log(double x) { return log(x); }

// ---------------------------------------------------------------------------
// Online log-sum-exp.
//
// State (m, s): m is the running max (-inf at the start; NaN never wins a `>`
// comparison, so m is never NaN) and s stands for
//     sum_j exp(x_j) = s * exp(shift(m)),   shift(m) = m if m is finite, else 0.
// The shift is always finite, so exp(x - shift) needs no guard: a -inf logit
// adds exactly 0 (also while the row is all -inf, where m - m would be NaN),
// a +inf logit adds +inf (so a row holding several +inf has lse +inf, as
// torch.logsumexp says, not inf - inf = NaN), and a NaN logit makes s NaN for
// good (NaN survives every rescale). Adding a block of columns therefore costs
// one max, at most one rescale, and one exp per column (no per-column branch).

template <class Acc>
CRINGE_HD Acc lse_shift(Acc m) {
  return (m == pos_inf<Acc>() || m == neg_inf<Acc>()) ? Acc(0) : m;
}

template <class Acc>
struct LseState {
  Acc m;
  Acc s;

  CRINGE_HD static LseState empty() { return {neg_inf<Acc>(), Acc(0)}; }

  CRINGE_HD Acc shift() const { return lse_shift(m); }

  // Raise the running max to mx (nothing happens unless mx > m, so a NaN mx
  // is ignored). s == 0 stays 0: a row that was all -inf so far must not turn
  // 0 * exp(+large) into NaN.
  template <class ExpF>
  CRINGE_HD void raise_to(Acc mx, ExpF expf_) {
    if (mx > m) {
      if (s != Acc(0)) s *= expf_(shift() - lse_shift(mx));
      m = mx;
    }
  }

  // Add one logit.
  template <class ExpF>
  CRINGE_HD void push(Acc x, ExpF expf_) {
    raise_to(x, expf_);
    s += expf_(x - shift());
  }

  // Merge another partial state (from another thread or block of columns).
  template <class ExpF>
  CRINGE_HD void merge(const LseState& o, ExpF expf_) {
    LseState a = *this;
    LseState b = o;
    const Acc mn = o.m > m ? o.m : m;
    a.raise_to(mn, expf_);
    b.raise_to(mn, expf_);
    m = mn;
    s = a.s + b.s;
  }

  // log sum exp; -inf for an all -inf row, +inf if any logit is +inf, NaN
  // when any logit was NaN.
  CRINGE_HD Acc lse() const { return shift() + precise_log(s); }
};

// ---------------------------------------------------------------------------
// Candidate order.

// Sort key of a logit for the top-k: NaN counts as +inf, so a NaN row still
// yields valid candidate columns (its loss is NaN anyway), as in reference.py.
template <class Acc>
CRINGE_HD Acc topk_key(Acc x) {
  return x != x ? pos_inf<Acc>() : x;
}

// True when candidate (ka, ca) comes before (kb, cb): larger key first, then
// the lower column. Keys are never NaN (see topk_key).
template <class Acc, class Col>
CRINGE_HD bool comes_before(Acc ka, Col ca, Acc kb, Col cb) {
  return ka > kb || (ka == kb && ca < cb);
}

// Sorted top-k list stored with a stride (the CUDA kernel interleaves one
// list per thread in shared memory: element e of thread t at e * stride + t).
// Columns must be offered in ascending order, which makes "strictly larger
// key than the current last" the whole admission test once the list is full.
template <class Acc, class Col>
struct StridedTopK {
  Acc* keys;
  Col* cols;
  int stride;
  int cap;
  int count;

  CRINGE_HD bool full() const { return count == cap; }
  // The key an offer must beat once the list is full.
  CRINGE_HD Acc threshold() const { return count < cap ? neg_inf<Acc>() : keys[(count - 1) * stride]; }
  // Already in candidate order (same interface as HeapTopK).
  CRINGE_HD void sort() {}

  CRINGE_HD void offer(Acc key, Col col) {
    if (count == cap && !(key > keys[(count - 1) * stride])) return;
    int pos = count < cap ? count++ : cap - 1;
    // Equal keys stay in column order because col is the largest seen so far.
    while (pos > 0 && key > keys[(pos - 1) * stride]) {
      keys[pos * stride] = keys[(pos - 1) * stride];
      cols[pos * stride] = cols[(pos - 1) * stride];
      --pos;
    }
    keys[pos * stride] = key;
    cols[pos * stride] = col;
  }
};

// Binary heap of the best `cap` candidates seen so far, the worst at the
// root: O(log k) per admitted element for any k (the CPU kernel's case,
// where k may be as large as V - 1). Columns are offered in ascending order.
template <class Acc, class Col>
struct HeapTopK {
  Acc* keys;
  Col* cols;
  int64_t cap;
  int64_t count;

  CRINGE_HD bool full() const { return count == cap; }
  // Offers with a key not above this are rejected once the heap is full.
  CRINGE_HD Acc threshold() const { return count < cap ? neg_inf<Acc>() : keys[0]; }

  // "a is worse than b": the heap order (worst at the root).
  CRINGE_HD bool worse(int64_t a, int64_t b) const { return comes_before(keys[b], cols[b], keys[a], cols[a]); }

  CRINGE_HD void swap_at(int64_t a, int64_t b) {
    Acc tk = keys[a];
    keys[a] = keys[b];
    keys[b] = tk;
    Col tc = cols[a];
    cols[a] = cols[b];
    cols[b] = tc;
  }

  CRINGE_HD void sift_down(int64_t i, int64_t n) {
    for (;;) {
      int64_t l = 2 * i + 1;
      if (l >= n) return;
      int64_t w = (l + 1 < n && worse(l + 1, l)) ? l + 1 : l;
      if (!worse(w, i)) return;
      swap_at(i, w);
      i = w;
    }
  }

  CRINGE_HD void offer(Acc key, Col col) {
    if (count < cap) {
      int64_t i = count++;
      keys[i] = key;
      cols[i] = col;
      while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!worse(i, p)) break;
        swap_at(i, p);
        i = p;
      }
      return;
    }
    // Ascending columns: an equal key never beats what is already kept.
    if (!(key > keys[0])) return;
    keys[0] = key;
    cols[0] = col;
    sift_down(0, count);
  }

  // Sort in place into candidate order (best first); the heap is consumed.
  CRINGE_HD void sort() {
    for (int64_t n = count; n > 1; --n) {
      swap_at(0, n - 1);  // the worst of the first n goes to the back
      sift_down(0, n - 1);
    }
  }
};

// ---------------------------------------------------------------------------
// The draw (cringe_kernels/backends/base.py): with w_j = exp(c_j - c_1)
// (0 where c_j = -inf) and q = w / sum(w), the first j with
// q_1 + .. + q_j > u; else the last j with q_j > 0; else 0.
// `keys` holds c_1..c_n in candidate order with stride `stride`.
template <class Acc>
CRINGE_HD int64_t draw_position(const Acc* keys, int64_t n, int64_t stride, float u) {
  const Acc c1 = keys[0];
  Acc total = Acc(0);
  for (int64_t j = 0; j < n; ++j) {
    const Acc c = keys[j * stride];
    total += c == neg_inf<Acc>() ? Acc(0) : precise_exp(c - c1);
  }
  const Acc uu = static_cast<Acc>(u);
  Acc cum = Acc(0);
  int64_t last_positive = -1;
  for (int64_t j = 0; j < n; ++j) {
    const Acc c = keys[j * stride];
    const Acc q = (c == neg_inf<Acc>() ? Acc(0) : precise_exp(c - c1)) / total;
    cum += q;
    if (q > Acc(0)) last_positive = j;
    if (cum > uu) return j;
  }
  return last_positive >= 0 ? last_positive : 0;
}

}  // namespace cringe
