// Shared by the CPU kernels of dnallm_nb.fastscan: denormal flushing and vectorisable float32 math (exp, log,
// softplus, silu) that the compiler inlines into the kernels' SIMD loops. It includes only the ATen headers the
// kernels use (not <ATen/ATen.h>): each kernel file then compiles in a few seconds.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

// The hand-vectorised paths need AVX-512 F and DQ (-march=native on a CPU that has them); elsewhere the compiler
// vectorises the plain loops.
#if defined(__AVX512F__) && defined(__AVX512DQ__)
#define DNALLM_AVX512 1
#else
#define DNALLM_AVX512 0
#endif

namespace dnallm {
// Flush denormals to zero while a kernel runs on this thread (they cost ~100 cycles per operation on x86);
// they only arise from decays below 1e-38, whose contributions are below float32 resolution anyway.
struct FlushDenormals {
#if defined(__x86_64__) || defined(_M_X64)
  unsigned int saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};


inline float bits_to_float(int32_t i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int32_t float_to_bits(float f) { int32_t i; std::memcpy(&i, &f, 4); return i; }

constexpr float kLog2e = 1.44269504088896341f;

// 2^r for r in [-1/2, 1/2], times 2^k (integer k in [-126, 127]): a degree-6 polynomial fitted to 2^r (relative
// error 1e-7 in float32), scaled through the exponent bits.
inline float pow2_scaled(float r, float k) {
  float p = 1.5353362e-4f;
  p = p * r + 1.3398875e-3f;
  p = p * r + 9.6184369e-3f;
  p = p * r + 5.5503324e-2f;
  p = p * r + 2.4022648e-1f;
  p = p * r + 6.9314718e-1f;
  p = p * r + 1.0f;
  return p * bits_to_float(((int32_t)k + 127) << 23);
}

// 2^r for r in [0, 1]: a degree-6 polynomial fitted to 2^r (relative error 8.4e-8 in float32).
inline float pow2_unit(float r) {
  float p = 2.170225343e-4f;
  p = p * r + 1.243968843e-3f;
  p = p * r + 9.678840637e-3f;
  p = p * r + 5.548334122e-2f;
  p = p * r + 2.402298301e-1f;
  p = p * r + 6.931470037e-1f;
  return p * r + 1.0f;
}

// 2^y = 2^(y - floor y) · 2^floor(y), floor(y) clamped to [-126, 127]. The Mamba-1 scan's decay: it spends most of
// its time here (on AVX-512, pow2_x16 below does the same for 16 lanes in fewer instructions).
inline float fexp2(float y) {
  const float k = std::min(std::max(__builtin_floorf(y), -126.f), 127.f);
  return pow2_unit(y - k) * bits_to_float(((int32_t)k + 127) << 23);
}

#if DNALLM_AVX512
// 2^r for 16 lanes of r in [0, 1]: pow2_unit's polynomial.
inline __m512 pow2_unit_x16(__m512 r) {
  __m512 p = _mm512_set1_ps(2.170225343e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.243968843e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.678840637e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.548334122e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.402298301e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(6.931470037e-1f));
  return _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
}

// 2^y for 16 lanes in 8 instructions: vreduceps gives r = y - floor(y), the polynomial 2^r (6 FMAs), and vscalefps
// multiplies by 2^floor(y), with no clamping (far below the float range the result is 0, as exp's is).
inline __m512 pow2_x16(__m512 y) {
  return _mm512_scalef_ps(pow2_unit_x16(_mm512_reduce_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)), y);
}

// exp(x) for 16 lanes, |x| <= 88: k = floor(x log2 e) and r = x - k ln2 in two steps (Cody-Waite, as fexp), so large
// |x| lose no digits; then 2^(r log2 e) · 2^k.
inline __m512 exp_x16(__m512 x) {
  const __m512 k =
      _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.428606765330187045e-06f), r);
  return _mm512_scalef_ps(pow2_unit_x16(_mm512_mul_ps(r, _mm512_set1_ps(kLog2e))), k);
}

// silu(x) = x / (1 + exp(-x)) for 16 lanes, the division as a reciprocal estimate and one Newton step (relative
// error 4e-9; a vector division would cost more than the rest together).
inline __m512 silu_x16(__m512 x) {
  const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), exp_x16(_mm512_min_ps(_mm512_sub_ps(_mm512_setzero_ps(), x),
                                                                              _mm512_set1_ps(87.3f))));
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(x, _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f))));
}
#endif

// exp(x), x clamped to [-87.3, 88.7]: k = round(x log2 e), r = x - k ln2 in two exact-ish steps (Cody-Waite), so
// large |x| lose no digits to rounding x log2 e; then 2^(r log2 e) · 2^k.
inline float fexp(float x) {
  x = std::min(std::max(x, -87.3f), 88.7f);
  const float k = __builtin_roundf(x * kLog2e);
  float r = x - k * 0.693145751953125f;
  r = r - k * 1.428606765330187045e-06f;
  return pow2_scaled(r * kLog2e, k);
}

// log(x) for normal x > 0 (Cephes logf): ~1 ulp.
inline float flog(float x) {
  const int32_t bits = float_to_bits(x);
  float e = (float)(((bits >> 23) & 0xff) - 127);
  float m = bits_to_float((bits & 0x007fffff) | 0x3f800000);  // mantissa in [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e = big ? e + 1.0f : e;
  const float f = m - 1.0f, z = f * f;
  float y = 7.0376836292E-2f;
  y = y * f - 1.1514610310E-1f;
  y = y * f + 1.1676998740E-1f;
  y = y * f - 1.2420140846E-1f;
  y = y * f + 1.4249322787E-1f;
  y = y * f - 1.6668057665E-1f;
  y = y * f + 2.0000714765E-1f;
  y = y * f - 2.4999993993E-1f;
  y = y * f + 3.3333331174E-1f;
  y = y * f * z - 2.12194440e-4f * e - 0.5f * z;
  return f + y + 0.693359375f * e;
}

// torch.nn.functional.softplus with beta 1 and threshold 20.
inline float fsoftplus(float x) {
  const float e = fexp(std::min(x, 20.0f));
  const float r = e < 1e-4f ? e * (1.0f - 0.5f * e) : flog(1.0f + e);
  return x > 20.0f ? x : r;
}

inline float fsilu(float x) { return x / (1.0f + fexp(-x)); }
}  // namespace dnallm
