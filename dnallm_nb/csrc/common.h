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
#include <type_traits>
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

// bfloat16 storage: the upper half of a float32. Loads widen exactly; stores round to nearest even (NaN stays NaN),
// as torch's conversion does. The kernels compute in float32 between a bfloat16 load and a bfloat16 store.
inline float bf16_to_float(uint16_t h) { return bits_to_float((int32_t)((uint32_t)h << 16)); }
inline uint16_t float_to_bf16(float f) {
  const uint32_t b = (uint32_t)float_to_bits(f);
  const uint32_t rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
  return (b & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((b >> 16) | 0x40u) : (uint16_t)rounded;
}
inline float to_float(float x) { return x; }
inline float to_float(uint16_t h) { return bf16_to_float(h); }
inline void store_float(float* dst, float x) { *dst = x; }
inline void store_float(uint16_t* dst, float x) { *dst = float_to_bf16(x); }

// True for a bfloat16 tensor, false for float32; anything else is an error naming `what`.
inline bool is_bf16(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, what,
              " must be float32 or bfloat16, got ", t.scalar_type());
  return t.scalar_type() == at::kBFloat16;
}

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

// 2^y, y clamped to [-126, 127]. The Mamba-1 scan's decay: it spends most of its time here (on AVX-512, pow2_x16
// below does the same for 16 lanes in fewer instructions).
inline float fexp2(float y) {
  y = std::min(std::max(y, -126.f), 127.f);
  const float k = __builtin_roundf(y);
  return pow2_scaled(y - k, k);
}

#if DNALLM_AVX512
// 2^r for 16 lanes of r in [-1/2, 1/2]: pow2_scaled's polynomial. The interval is centred so that decays just below 1
// (r just below 0) keep the float spacing of numbers below 1: a fraction in [0, 1) would put them just below 2 and
// halve their precision, which long-memory channels compound.
inline __m512 pow2_half_x16(__m512 r) {
  __m512 p = _mm512_set1_ps(1.5353362e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3398875e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.6184369e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.5503324e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.4022648e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(6.9314718e-1f));
  return _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
}

// 2^y for 16 lanes in 9 instructions: vreduceps gives r = y - round(y), a subtraction the integer k = y - r, the
// polynomial 2^r (6 FMAs), and vscalefps multiplies by 2^k, with no clamping (far below the float range the result
// is 0, as exp's is).
inline __m512 pow2_x16(__m512 y) {
  const __m512 r = _mm512_reduce_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_scalef_ps(pow2_half_x16(r), _mm512_sub_ps(y, r));
}

// exp(x) for 16 lanes, |x| <= 88: k = round(x log2 e) and r = x - k ln2 in two steps (Cody-Waite, as fexp), so large
// |x| lose no digits; then 2^(r log2 e) · 2^k.
inline __m512 exp_x16(__m512 x) {
  const __m512 k =
      _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.428606765330187045e-06f), r);
  return _mm512_scalef_ps(pow2_half_x16(_mm512_mul_ps(r, _mm512_set1_ps(kLog2e))), k);
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)) for 16 lanes, with log1p(t) = t·q(t), q a degree-9 polynomial fitted on
// [0, 1] (relative error 1.8e-7): no logarithm, no branch. Above 20 the log1p term is below half an ulp of x, so the
// result is x, as with torch's threshold.
inline __m512 softplus_x16(__m512 x) {
  const __m512 t = exp_x16(_mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)), _mm512_set1_ps(-87.3f)));
  __m512 q = _mm512_set1_ps(-3.244017949e-3f);
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.985142939e-2f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(-5.695947260e-2f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.060364842e-1f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(-1.530558914e-1f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.967593729e-1f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(-2.495413274e-1f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(3.332996368e-1f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(-4.999990165e-1f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.0f));
  return _mm512_fmadd_ps(t, q, _mm512_max_ps(x, _mm512_setzero_ps()));
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
