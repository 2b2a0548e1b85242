// ForwardParams / BackwardParams from the ints the Python side passes
// (tensor.data_ptr(), sizes, strides), shared by the _C_cpu and _C_cuda
// bindings so that both modules read their arguments identically.
#pragma once

#include <cstdint>

#include "cringe/params.h"

namespace cringe {
namespace bindings {

template <class T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// The fields both structs share: the logits' layout and the targets.
template <class Params>
void set_rows(Params& p, int dtype, std::uintptr_t logits, int64_t B, int64_t T, int64_t V, int64_t stride_b,
              int64_t stride_t, std::uintptr_t target) {
  p.dtype = static_cast<DType>(dtype);
  p.logits = ptr<const void>(logits);
  p.B = B;
  p.T = T;
  p.V = V;
  p.stride_b = stride_b;
  p.stride_t = stride_t;
  p.target = ptr<const int64_t>(target);
}

inline ForwardParams forward_params(int dtype, std::uintptr_t logits, int64_t B, int64_t T, int64_t V,
                                    int64_t stride_b, int64_t stride_t, std::uintptr_t target,
                                    std::uintptr_t uniform, int64_t k, int64_t ignore_index, std::uintptr_t lse,
                                    std::uintptr_t target_logit, std::uintptr_t sample_logit,
                                    std::uintptr_t sample_index) {
  ForwardParams p{};
  set_rows(p, dtype, logits, B, T, V, stride_b, stride_t, target);
  p.uniform = ptr<const float>(uniform);
  p.k = k;
  p.ignore_index = ignore_index;
  p.lse = ptr<void>(lse);
  p.target_logit = ptr<void>(target_logit);
  p.sample_logit = ptr<void>(sample_logit);
  p.sample_index = ptr<int64_t>(sample_index);
  return p;
}

// The single pass's extra forward arguments (all 0: an ordinary forward).
inline void set_single_pass(ForwardParams& p, std::uintptr_t lse_weight, std::uintptr_t grad, int64_t grad_stride_b,
                            int64_t grad_stride_t) {
  p.lse_weight = ptr<const void>(lse_weight);
  p.grad = ptr<void>(grad);
  p.grad_stride_b = grad_stride_b;
  p.grad_stride_t = grad_stride_t;
}

inline BackwardParams backward_params(int dtype, std::uintptr_t logits, int64_t B, int64_t T, int64_t V,
                                      int64_t stride_b, int64_t stride_t, std::uintptr_t target,
                                      std::uintptr_t sample_index, std::uintptr_t lse, std::uintptr_t grad_lse,
                                      std::uintptr_t grad_target, std::uintptr_t grad_sample, int64_t ignore_index,
                                      std::uintptr_t grad, int64_t grad_stride_b, int64_t grad_stride_t) {
  BackwardParams p{};
  set_rows(p, dtype, logits, B, T, V, stride_b, stride_t, target);
  p.sample_index = ptr<const int64_t>(sample_index);
  p.lse = ptr<const void>(lse);
  p.grad_lse = ptr<const void>(grad_lse);
  p.grad_target = ptr<const void>(grad_target);
  p.grad_sample = ptr<const void>(grad_sample);
  p.ignore_index = ignore_index;
  p.grad = ptr<void>(grad);
  p.grad_stride_b = grad_stride_b;
  p.grad_stride_t = grad_stride_t;
  return p;
}

}  // namespace bindings
}  // namespace cringe
