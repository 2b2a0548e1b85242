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
         std::uintptr_t stream, int gate, std::uintptr_t lse_weight, std::uintptr_t grad, int64_t grad_stride_b,
         int64_t grad_stride_t, int grad_threads, int grad_blocks_per_sm, int grad_cache_bytes, int pieces,
         std::uintptr_t workspace, bool grad_staged) {
        cringe::ForwardParams p = forward_params(dtype, logits, B, T, V, stride_b, stride_t, target, uniform, k,
                                                 ignore_index, lse, target_logit, sample_logit, sample_index);
        cringe::bindings::set_single_pass(p, lse_weight, grad, grad_stride_b, grad_stride_t);
        if (gate < 0 || gate > 3) {
          throw std::invalid_argument("gate must be 0 (thread), 1 (warp), 2 (row) or 3 (row-async)");
        }
        check(cudaSetDevice(device), "cudaSetDevice");
        cringe::cuda::SinglePassShape shape;
        shape.threads = grad_threads;
        shape.blocks_per_sm = grad_blocks_per_sm;
        shape.cache_bytes = grad_cache_bytes;
        shape.staged = grad_staged;
        cringe::cuda::RowSplit split;
        split.pieces = pieces;
        split.workspace = cringe::bindings::ptr<void>(workspace);
        check(cringe::cuda::launch_forward(p, reinterpret_cast<cudaStream_t>(stream),
                                           static_cast<cringe::cuda::ForwardGate>(gate), shape, split),
              "forward launch");
      },
      py::arg("dtype"), py::arg("logits"), py::arg("B"), py::arg("T"), py::arg("V"), py::arg("stride_b"),
      py::arg("stride_t"), py::arg("target"), py::arg("uniform"), py::arg("k"), py::arg("ignore_index"),
      py::arg("lse"), py::arg("target_logit"), py::arg("sample_logit"), py::arg("sample_index"), py::arg("device"),
      py::arg("stream"), py::arg("gate") = 0, py::arg("lse_weight") = 0, py::arg("grad") = 0,
      py::arg("grad_stride_b") = 0, py::arg("grad_stride_t") = 0, py::arg("grad_threads") = 512,
      py::arg("grad_blocks_per_sm") = 1, py::arg("grad_cache_bytes") = 0, py::arg("pieces") = 1, py::arg("workspace") = 0,
      py::arg("grad_staged") = false, py::call_guard<py::gil_scoped_release>(),
      "Row statistics of [B, T, V] logits on `stream`; see cringe_kernels/backends/base.py. `gate`: the top-k "
      "strategy, 0 per-thread lists, 1 warp-shared gate, 2 row threshold, 3 row threshold with cp.async "
      "rounds (see csrc/cuda/launch.h). With "
      "`lse_weight` and `grad`, also the single-pass gradient for d loss / d lse = lse_weight, launched with "
      "`grad_threads` per block and `grad_blocks_per_sm`, keeping up to `grad_cache_bytes` of each row in shared "
      "memory for the gradient sweep, its rounds copied by cp.async if `grad_staged` (or `gate` is 3). "
      "`pieces` > 1: each row in that many blocks, their "
      "statistics merged through `workspace` (forward_workspace_bytes bytes; see csrc/cuda/launch.h).");

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
      "forward with the same `lse_weight` wrote into `grad`. `pieces`: blocks per row.");

  m.def(
      "row_pieces",
      [](int64_t N, int64_t V, int device) {
        int sms = 0;
        check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
        return cringe::cuda::row_pieces(N, V, sms);
      },
      py::arg("N"), py::arg("V"), py::arg("device"),
      "Blocks per row for N rows of V columns on `device` (the policy of CRINGE_KERNELS_CUDA_SPLIT=auto).");

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
