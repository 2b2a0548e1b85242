// float16 / bfloat16 <-> float32 conversions on raw 16-bit patterns.
//
// The CPU kernel receives half-precision logits as uint16_t bits (no compiler
// half type is assumed). These are branch-light integer/float tricks so the
// compiler can vectorise the upcast; rounding is round-to-nearest-even, as
// in torch's own casts, so a gradient stored by the kernel matches
// `tensor.to(torch.float16 / torch.bfloat16)`.
#pragma once

#include <cstdint>

#include "macros.h"

namespace cringe {

// __builtin_bit_cast (GCC >= 11, clang) rather than memcpy: inside
// `omp simd` loops a memcpy through a local defeats vectorisation.
CRINGE_HD float bits_to_f32(uint32_t b) { return __builtin_bit_cast(float, b); }

CRINGE_HD uint32_t f32_to_bits(float f) { return __builtin_bit_cast(uint32_t, f); }

CRINGE_HD float bf16_to_f32(uint16_t h) { return bits_to_f32(static_cast<uint32_t>(h) << 16); }

CRINGE_HD float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  // Shifting exponent+mantissa into float position and scaling by 2^112
  // rebiases the exponent (15 -> 127) and also turns half subnormals into the
  // right float normals; inf/NaN need the float exponent field set instead.
  float mag = bits_to_f32(em << 13) * 5.192296858534828e+33f;  // 2^112
  if (em >= 0x7c00u) mag = bits_to_f32((em << 13) | 0x7f800000u);
  return bits_to_f32(f32_to_bits(mag) | sign);
}

CRINGE_HD uint16_t f32_to_bf16(float f) {
  const uint32_t b = f32_to_bits(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((b >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

CRINGE_HD uint16_t f32_to_f16(float f) {
  const uint32_t b = f32_to_bits(f);
  const uint32_t sign = (b >> 16) & 0x8000u;
  uint32_t a = b & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (a < 0x38800000u) {
    // Half subnormal or zero: adding 0.5 puts the value's 2^-24 units in the
    // low mantissa bits, and the FPU's own rounding is round-to-nearest-even.
    const float t = bits_to_f32(a) + 0.5f;
    return static_cast<uint16_t>(sign | (f32_to_bits(t) - 0x3f000000u));
  }
  // Normal: rebias the exponent by (15 - 127) << 23 and round to nearest even
  // on the 13 dropped mantissa bits.
  a += 0xc8000fffu + ((a >> 13) & 1u);
  return static_cast<uint16_t>(sign | (a >> 13));
}

}  // namespace cringe
