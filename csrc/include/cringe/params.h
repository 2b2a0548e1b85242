// Arguments of the row-statistics primitive as raw pointers and sizes.
//
// Conventions are those of cringe_kernels/backends/base.py: logits are
// [B, T, V] with unit last stride and free leading strides (row i = b*T + t),
// every per-row vector is [N] contiguous, N = B * T, and `Acc` outputs are
// float64 for float64 logits and float32 otherwise. All strides and offsets
// are in elements and 64-bit.
#pragma once

#include <cstdint>

#include "macros.h"

namespace cringe {

struct ForwardParams {
  DType dtype;
  const void* logits;
  int64_t B, T, V;
  int64_t stride_b, stride_t;
  const int64_t* target;   // [N]
  const float* uniform;    // [N], may be null when k == 0
  int64_t k;               // 0: no sampling
  int64_t ignore_index;
  void* lse;               // [N] Acc
  void* target_logit;      // [N] Acc
  void* sample_logit;      // [N] Acc
  int64_t* sample_index;   // [N]
  // Single pass (CUDA launch_forward_with_grad only; null otherwise): for a
  // guess lse_weight of d loss / d lse, each non-ignored row with a target in
  // range also gets grad = lse_weight * exp(x - lse), written while the row
  // is read; the backward with the same lse_weight completes it.
  const void* lse_weight;  // [N] Acc
  void* grad;              // [B, T, V] of the logits' dtype
  int64_t grad_stride_b, grad_stride_t;
};

struct BackwardParams {
  DType dtype;
  const void* logits;
  int64_t B, T, V;
  int64_t stride_b, stride_t;
  const int64_t* target;        // [N]
  const int64_t* sample_index;  // [N], -1 where not sampled
  const void* lse;              // [N] Acc
  const void* grad_lse;         // [N] Acc
  const void* grad_target;      // [N] Acc
  const void* grad_sample;      // [N] Acc
  int64_t ignore_index;
  void* grad;                   // [B, T, V] of the logits' dtype
  int64_t grad_stride_b, grad_stride_t;  // == logits' strides when in place
  // Null, or the lse_weight of a forward with grad into this same `grad`
  // (CUDA only): rows whose grad_lse equals it only get their target and
  // sampled columns, ignored rows nothing; the rest are written in full.
  const void* lse_weight;       // [N] Acc
};

}  // namespace cringe
