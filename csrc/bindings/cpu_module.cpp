// pybind11 module cringe_kernels._C_cpu: the CPU kernels over raw pointers.
//
// Pointers arrive as Python ints (tensor.data_ptr()); the Python side
// (cringe_kernels/backends/cpu_backend.py) owns validation and allocation.
// The GIL is released while a kernel runs.
#include <pybind11/pybind11.h>
#include <omp.h>

#include <cstdint>
#include <stdexcept>

#include "bindings/params_from_ints.h"
#include "cpu/row_stats_cpu.h"

namespace py = pybind11;

namespace {

using cringe::bindings::backward_params;
using cringe::bindings::forward_params;
using cringe::bindings::ptr;

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
         std::uintptr_t ws_keys, std::uintptr_t ws_cols, int num_threads, std::uintptr_t lse_weight,
         std::uintptr_t grad, int64_t grad_stride_b, int64_t grad_stride_t) {
        cringe::ForwardParams p = forward_params(dtype, logits, B, T, V, stride_b, stride_t, target, uniform, k,
                                                 ignore_index, lse, target_logit, sample_logit, sample_index);
        cringe::bindings::set_single_pass(p, lse_weight, grad, grad_stride_b, grad_stride_t);
        raise_if(cringe::cpu::forward(p, ptr<void>(ws_keys), ptr<int64_t>(ws_cols), num_threads));
      },
      py::arg("dtype"), py::arg("logits"), py::arg("B"), py::arg("T"), py::arg("V"), py::arg("stride_b"),
      py::arg("stride_t"), py::arg("target"), py::arg("uniform"), py::arg("k"), py::arg("ignore_index"),
      py::arg("lse"), py::arg("target_logit"), py::arg("sample_logit"), py::arg("sample_index"),
      py::arg("ws_keys"), py::arg("ws_cols"), py::arg("num_threads"), py::arg("lse_weight") = 0,
      py::arg("grad") = 0, py::arg("grad_stride_b") = 0, py::arg("grad_stride_t") = 0,
      py::call_guard<py::gil_scoped_release>(),
      "Row statistics of [B, T, V] logits; see cringe_kernels/backends/base.py. With `lse_weight` and `grad`, "
      "also the single-pass gradient for d loss / d lse = lse_weight.");

  m.def(
      "backward",
      [](int dtype, std::uintptr_t logits, int64_t B, int64_t T, int64_t V, int64_t stride_b, int64_t stride_t,
         std::uintptr_t target, std::uintptr_t sample_index, std::uintptr_t lse, std::uintptr_t grad_lse,
         std::uintptr_t grad_target, std::uintptr_t grad_sample, int64_t ignore_index, std::uintptr_t grad,
         int64_t grad_stride_b, int64_t grad_stride_t, int num_threads, std::uintptr_t lse_weight) {
        cringe::BackwardParams p =
            backward_params(dtype, logits, B, T, V, stride_b, stride_t, target, sample_index, lse, grad_lse,
                            grad_target, grad_sample, ignore_index, grad, grad_stride_b, grad_stride_t);
        p.lse_weight = ptr<const void>(lse_weight);
        raise_if(cringe::cpu::backward(p, num_threads));
      },
      py::arg("dtype"), py::arg("logits"), py::arg("B"), py::arg("T"), py::arg("V"), py::arg("stride_b"),
      py::arg("stride_t"), py::arg("target"), py::arg("sample_index"), py::arg("lse"), py::arg("grad_lse"),
      py::arg("grad_target"), py::arg("grad_sample"), py::arg("ignore_index"), py::arg("grad"),
      py::arg("grad_stride_b"), py::arg("grad_stride_t"), py::arg("num_threads"), py::arg("lse_weight") = 0,
      py::call_guard<py::gil_scoped_release>(),
      "Gradient of the logits from per-row coefficients; grad may alias logits. With `lse_weight`, completes "
      "the gradient a forward with the same `lse_weight` wrote into `grad`.");

  m.def("max_threads", []() { return omp_get_max_threads(); }, "OpenMP's default thread count.");
}
