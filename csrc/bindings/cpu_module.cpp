// pybind11 module cringe_kernels._C_cpu: the CPU kernels over raw pointers.
//
// Pointers arrive as Python ints (tensor.data_ptr()); the Python side
// (cringe_kernels/backends/cpu_backend.py) owns validation and allocation.
// The GIL is released while a kernel runs.
#include <pybind11/pybind11.h>
#include <omp.h>

#include <cstdint>
#include <stdexcept>

#include "cpu/row_stats_cpu.h"

namespace py = pybind11;

namespace {

template <class T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void raise_if(const char* err) {
  if (err != nullptr) throw std::invalid_argument(err);
}

}  // namespace

PYBIND11_MODULE(_C_cpu, m) {
  m.doc() = "cringe_kernels CPU kernels (torch-free; pointers as ints)";

  m.def(
      "forward",
      [](int dtype, std::uintptr_t logits, int64_t B, int64_t T, int64_t V, int64_t stride_b, int64_t stride_t,
         std::uintptr_t target, std::uintptr_t uniform, int64_t k, int64_t ignore_index, std::uintptr_t lse,
         std::uintptr_t target_logit, std::uintptr_t sample_logit, std::uintptr_t sample_index,
         std::uintptr_t ws_keys, std::uintptr_t ws_cols, int num_threads) {
        cringe::ForwardParams p{};
        p.dtype = static_cast<cringe::DType>(dtype);
        p.logits = ptr<const void>(logits);
        p.B = B;
        p.T = T;
        p.V = V;
        p.stride_b = stride_b;
        p.stride_t = stride_t;
        p.target = ptr<const int64_t>(target);
        p.uniform = ptr<const float>(uniform);
        p.k = k;
        p.ignore_index = ignore_index;
        p.lse = ptr<void>(lse);
        p.target_logit = ptr<void>(target_logit);
        p.sample_logit = ptr<void>(sample_logit);
        p.sample_index = ptr<int64_t>(sample_index);
        raise_if(cringe::cpu::forward(p, ptr<void>(ws_keys), ptr<int64_t>(ws_cols), num_threads));
      },
      py::call_guard<py::gil_scoped_release>(),
      "Row statistics of [B, T, V] logits; see cringe_kernels/backends/base.py.");

  m.def(
      "backward",
      [](int dtype, std::uintptr_t logits, int64_t B, int64_t T, int64_t V, int64_t stride_b, int64_t stride_t,
         std::uintptr_t target, std::uintptr_t sample_index, std::uintptr_t lse, std::uintptr_t grad_lse,
         std::uintptr_t grad_target, std::uintptr_t grad_sample, int64_t ignore_index, std::uintptr_t grad,
         int64_t grad_stride_b, int64_t grad_stride_t, int num_threads) {
        cringe::BackwardParams p{};
        p.dtype = static_cast<cringe::DType>(dtype);
        p.logits = ptr<const void>(logits);
        p.B = B;
        p.T = T;
        p.V = V;
        p.stride_b = stride_b;
        p.stride_t = stride_t;
        p.target = ptr<const int64_t>(target);
        p.sample_index = ptr<const int64_t>(sample_index);
        p.lse = ptr<const void>(lse);
        p.grad_lse = ptr<const void>(grad_lse);
        p.grad_target = ptr<const void>(grad_target);
        p.grad_sample = ptr<const void>(grad_sample);
        p.ignore_index = ignore_index;
        p.grad = ptr<void>(grad);
        p.grad_stride_b = grad_stride_b;
        p.grad_stride_t = grad_stride_t;
        raise_if(cringe::cpu::backward(p, num_threads));
      },
      py::call_guard<py::gil_scoped_release>(),
      "Gradient of the logits from per-row coefficients; grad may alias logits.");

  m.def("max_threads", []() { return omp_get_max_threads(); }, "OpenMP's default thread count.");
}
