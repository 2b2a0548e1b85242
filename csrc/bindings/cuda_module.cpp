// pybind11 module cringe_kernels._C_cuda: the CUDA launchers over raw pointers.
//
// Compiled by the host compiler against cuda_runtime_api.h and linked with
// the static CUDA runtime, so importing it needs neither a GPU nor a driver;
// a call without one raises RuntimeError carrying the CUDA error message.
// Pointers and the stream arrive as Python ints; `device` is the CUDA device
// index the pointers live on (this module's runtime is not torch's, so it
// selects the device itself).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "bindings/params_from_ints.h"
#include "cuda/launch.h"

#ifndef CRINGE_CUDA_ARCHS
#define CRINGE_CUDA_ARCHS "unknown"
#endif

namespace py = pybind11;

namespace {

using cringe::bindings::backward_params;
using cringe::bindings::forward_params;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("cringe_kernels._C_cuda ") + what + ": " + cudaGetErrorName(err) + ": " +
                             cudaGetErrorString(err));
  }
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "cringe_kernels CUDA kernels (torch-free; pointers and stream as ints)";
  m.attr("archs") = CRINGE_CUDA_ARCHS;
  m.attr("cuda_runtime_version") = CUDART_VERSION;
  m.attr("max_k") = cringe::cuda::kMaxK;
  m.attr("max_pieces") = cringe::cuda::kMaxPieces;

  m.def(
      "forward",
      [](int dtype, std::uintptr_t logits, int64_t B, int64_t T, int64_t V, int64_t stride_b, int64_t stride_t,
         std::uintptr_t target, std::uintptr_t uniform, int64_t k, int64_t ignore_index, std::uintptr_t lse,
         std::uintptr_t target_logit, std::uintptr_t sample_logit, std::uintptr_t sample_index, int device,
         std::uintptr_t stream, int pieces, std::uintptr_t workspace) {
        const cringe::ForwardParams p = forward_params(dtype, logits, B, T, V, stride_b, stride_t, target, uniform, k,
                                                       ignore_index, lse, target_logit, sample_logit, sample_index);
        check(cudaSetDevice(device), "cudaSetDevice");
        cringe::cuda::RowSplit split;
        split.pieces = pieces;
        split.workspace = cringe::bindings::ptr<void>(workspace);
        check(cringe::cuda::launch_forward(p, reinterpret_cast<cudaStream_t>(stream), split), "forward launch");
      },
      py::arg("dtype"), py::arg("logits"), py::arg("B"), py::arg("T"), py::arg("V"), py::arg("stride_b"),
      py::arg("stride_t"), py::arg("target"), py::arg("uniform"), py::arg("k"), py::arg("ignore_index"),
      py::arg("lse"), py::arg("target_logit"), py::arg("sample_logit"), py::arg("sample_index"), py::arg("device"),
      py::arg("stream"), py::arg("pieces") = 1, py::arg("workspace") = 0, py::call_guard<py::gil_scoped_release>(),
      "Row statistics of [B, T, V] logits on `stream`; see cringe_kernels/backends/base.py. `pieces` > 1: each "
      "row in that many blocks, their statistics merged through `workspace` (forward_workspace_bytes bytes; see "
      "csrc/cuda/launch.h).");

  m.def(
      "single_pass",
      [](int dtype, std::uintptr_t logits, int64_t B, int64_t T, int64_t V, int64_t stride_b, int64_t stride_t,
         std::uintptr_t target, std::uintptr_t uniform, int64_t k, int64_t ignore_index, std::uintptr_t lse,
         std::uintptr_t target_logit, std::uintptr_t sample_logit, std::uintptr_t sample_index, int device,
         std::uintptr_t stream, std::uintptr_t lse_weight, std::uintptr_t grad, int threads, int blocks_per_sm,
         int cache_bytes, bool staged) {
        cringe::ForwardParams p = forward_params(dtype, logits, B, T, V, stride_b, stride_t, target, uniform, k,
                                                 ignore_index, lse, target_logit, sample_logit, sample_index);
        // `grad` is a new contiguous [B, T, V] tensor.
        cringe::bindings::set_single_pass(p, lse_weight, grad, T * V, V);
        check(cudaSetDevice(device), "cudaSetDevice");
        const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
        check(threads == 0 ? cringe::cuda::launch_forward(p, s)
                           : cringe::cuda::launch_single_pass(
                                 p, s, cringe::cuda::SinglePassShape{threads, blocks_per_sm, cache_bytes, staged}),
              "single pass launch");
      },
      py::arg("dtype"), py::arg("logits"), py::arg("B"), py::arg("T"), py::arg("V"), py::arg("stride_b"),
      py::arg("stride_t"), py::arg("target"), py::arg("uniform"), py::arg("k"), py::arg("ignore_index"),
      py::arg("lse"), py::arg("target_logit"), py::arg("sample_logit"), py::arg("sample_index"), py::arg("device"),
      py::arg("stream"), py::arg("lse_weight"), py::arg("grad"), py::arg("threads") = 0,
      py::arg("blocks_per_sm") = 0, py::arg("cache_bytes") = 0, py::arg("staged") = false,
      py::call_guard<py::gil_scoped_release>(),
      "The forward's statistics and, into the contiguous `grad`, the gradient for d loss / d lse = `lse_weight`, "
      "which backward() with the same `lse_weight` completes. Launched with `threads` per block and "
      "`blocks_per_sm`, keeping up to `cache_bytes` of each row in shared memory for the gradient sweep, its "
      "rounds copied by cp.async if `staged`; threads=0: single_pass_shape(V * element size).");

  m.def(
      "backward",
      [](int dtype, std::uintptr_t logits, int64_t B, int64_t T, int64_t V, int64_t stride_b, int64_t stride_t,
         std::uintptr_t target, std::uintptr_t sample_index, std::uintptr_t lse, std::uintptr_t grad_lse,
         std::uintptr_t grad_target, std::uintptr_t grad_sample, int64_t ignore_index, std::uintptr_t grad,
         int64_t grad_stride_b, int64_t grad_stride_t, int device, std::uintptr_t stream,
         std::uintptr_t lse_weight, int pieces) {
        cringe::BackwardParams p =
            backward_params(dtype, logits, B, T, V, stride_b, stride_t, target, sample_index, lse, grad_lse,
                            grad_target, grad_sample, ignore_index, grad, grad_stride_b, grad_stride_t);
        p.lse_weight = cringe::bindings::ptr<const void>(lse_weight);
        check(cudaSetDevice(device), "cudaSetDevice");
        check(cringe::cuda::launch_backward(p, reinterpret_cast<cudaStream_t>(stream), pieces), "backward launch");
      },
      py::arg("dtype"), py::arg("logits"), py::arg("B"), py::arg("T"), py::arg("V"), py::arg("stride_b"),
      py::arg("stride_t"), py::arg("target"), py::arg("sample_index"), py::arg("lse"), py::arg("grad_lse"),
      py::arg("grad_target"), py::arg("grad_sample"), py::arg("ignore_index"), py::arg("grad"),
      py::arg("grad_stride_b"), py::arg("grad_stride_t"), py::arg("device"), py::arg("stream"),
      py::arg("lse_weight") = 0, py::arg("pieces") = 1, py::call_guard<py::gil_scoped_release>(),
      "Gradient of the logits on `stream`; grad may alias logits. With `lse_weight`, completes the gradient a "
      "single_pass() with the same `lse_weight` wrote into `grad`. `pieces`: blocks per row.");

  m.def(
      "sm_count",
      [](int device) {
        int sms = 0;
        check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
        return sms;
      },
      py::arg("device"), "Number of SMs of CUDA device `device`.");

  m.def("row_pieces", &cringe::cuda::row_pieces, py::arg("N"), py::arg("V"), py::arg("sms"),
        "Blocks per row for N rows of V columns on `sms` SMs (the rule of csrc/cuda/launch.h; the Python side "
        "holds the same in cringe_kernels/backends/heuristics.py).");

  m.def(
      "single_pass_shape",
      [](int64_t row_bytes) {
        const cringe::cuda::SinglePassShape s = cringe::cuda::single_pass_shape(row_bytes);
        return py::make_tuple(s.threads, s.blocks_per_sm, s.cache_bytes, s.staged);
      },
      py::arg("row_bytes"),
      "(threads, blocks_per_sm, cache_bytes, staged) of the single pass over rows of `row_bytes` bytes: what "
      "single_pass() takes with threads=0.");

  m.def(
      "forward_workspace_bytes",
      [](int dtype, int64_t N, int64_t V, int64_t k, int pieces) {
        return cringe::cuda::forward_workspace_bytes(static_cast<cringe::DType>(dtype), N, V, k, pieces);
      },
      py::arg("dtype"), py::arg("N"), py::arg("V"), py::arg("k"), py::arg("pieces"),
      "Bytes of `workspace` a forward with `pieces` > 1 needs (0 for one piece).");

  m.def(
      "device_count",
      []() -> py::tuple {
        int n = 0;
        const cudaError_t err = cudaGetDeviceCount(&n);
        if (err != cudaSuccess) {
          cudaGetLastError();  // clear the non-sticky error
          return py::make_tuple(0, std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err));
        }
        return py::make_tuple(n, std::string());
      },
      "(number of CUDA devices this module's runtime sees, error message or '').");
}
