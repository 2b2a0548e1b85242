// CPU kernels of the row-statistics primitive (OpenMP over rows).
//
// Same algorithm as the CUDA kernels, on the shared per-row math of
// csrc/include/cringe. Nothing here allocates: the caller passes the top-k
// workspace (one slice of k_eff keys and columns per thread).
#pragma once

#include <cstdint>

#include "cringe/params.h"

namespace cringe {
namespace cpu {

// Forward pass over all N rows.
//
// ws_keys: [num_threads * k_eff] of Acc (float64 for float64 logits, else
//          float32); ws_cols: [num_threads * k_eff] int64; k_eff = min(k, V-1).
// Returns nullptr on success, else a static error message.
const char* forward(const ForwardParams& p, void* ws_keys, int64_t* ws_cols, int num_threads);

// Backward pass: writes p.grad (may equal p.logits with the same strides).
const char* backward(const BackwardParams& p, int num_threads);

}  // namespace cpu
}  // namespace cringe
