// The Mamba-1 selective scan on CPU, forward and backward (see nbs/06_fastscan.ipynb for the design).
#include "common.h"
#include "kernels.h"

namespace dnallm {
namespace {
constexpr int T = 64;  // time steps per tile of the Mamba-1 scan

struct View3 {  // a float32 (p) or bfloat16 (h) (batch, channel, time) tensor, any strides
  const float* p;
  int64_t sb, sc, st;
  const uint16_t* h = nullptr;  // set (and p null) for bfloat16
};
View3 view3(const at::Tensor& t) {
  if (is_bf16(t, "mamba1_scan's inputs u, delta, z, B, C"))
    return {nullptr, t.stride(0), t.stride(1), t.stride(2), reinterpret_cast<const uint16_t*>(t.data_ptr())};
  return {t.data_ptr<float>(), t.stride(0), t.stride(1), t.stride(2)};
}

#if DNALLM_AVX512
// dst[t * ld + c] = src[c * ls + t] for c, t < 16: a 16 x 16 transpose in registers (unpacks, then 128-bit shuffles).
inline void transpose16(const float* __restrict src, int64_t ls, float* __restrict dst, int64_t ld) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ls);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ld, r[i]);
}
#endif

// tile[t][c] = v[b, c0 + c, t0 + t] for c < cn (zero for cn <= c < DC), t < tn.
// load_tile of a bfloat16 view: widened to float32 as it is copied.
template <int DC>
inline void load_tile_bf16(const View3& v, int64_t b, int64_t c0, int cn, int64_t t0, int tn, float (&tile)[T][DC]) {
  const uint16_t* p = v.h + b * v.sb + c0 * v.sc + t0 * v.st;
  if (v.sc == 1 && cn == DC) {
    for (int t = 0; t < tn; ++t) {
      const uint16_t* q = p + t * v.st;
#pragma omp simd
      for (int c = 0; c < DC; ++c) tile[t][c] = bf16_to_float(q[c]);
    }
    return;
  }
  for (int t = 0; t < tn; ++t)
    for (int c = cn; c < DC; ++c) tile[t][c] = 0.f;
  for (int c = 0; c < cn; ++c)
    for (int t = 0; t < tn; ++t) tile[t][c] = bf16_to_float(p[c * v.sc + t * v.st]);
}

template <int DC>
inline void load_tile(const View3& v, int64_t b, int64_t c0, int cn, int64_t t0, int tn, float (&tile)[T][DC]) {
  if (v.h) return load_tile_bf16(v, b, c0, cn, t0, tn, tile);
  const float* p = v.p + b * v.sb + c0 * v.sc + t0 * v.st;
  if (v.sc == 1 && cn == DC) {  // channels contiguous: vector copies
    for (int t = 0; t < tn; ++t) {
      const float* q = p + t * v.st;
#pragma omp simd
      for (int c = 0; c < DC; ++c) tile[t][c] = q[c];
    }
    return;
  }
#if DNALLM_AVX512
  if (v.st == 1 && cn == DC && tn == T) {  // time contiguous, a whole tile: 16 x 16 blocks transposed in registers
    for (int c = 0; c < DC; c += 16)
      for (int t = 0; t < T; t += 16) transpose16(p + c * v.sc + t, v.sc, &tile[t][c], DC);
    return;
  }
#endif
  for (int t = 0; t < tn; ++t)
    for (int c = cn; c < DC; ++c) tile[t][c] = 0.f;
  for (int c = 0; c < cn; ++c)
    for (int t = 0; t < tn; ++t) tile[t][c] = p[c * v.sc + t * v.st];
}

// Ask the caches for v[b, c0 : c0 + cn, t0 : t0 + tn] ahead of use, row by row along whichever axis is contiguous.
// A tile's rows lie far apart (one per channel or per token), a pattern the hardware prefetchers do not follow: without
// this the scan waits on memory for each tile it loads.
inline void prefetch_tile(const View3& v, int64_t b, int64_t c0, int cn, int64_t t0, int tn) {
  const int64_t offset = b * v.sb + c0 * v.sc + t0 * v.st, size = v.h ? 2 : 4;
  const char* p = v.h ? reinterpret_cast<const char*>(v.h + offset) : reinterpret_cast<const char*>(v.p + offset);
  const bool channels_contiguous = v.sc == 1;
  if (!channels_contiguous && v.st != 1) return;
  const int rows = channels_contiguous ? tn : cn, bytes = size * (channels_contiguous ? cn : tn);
  const int64_t stride = size * (channels_contiguous ? v.st : v.sc);
  for (int r = 0; r < rows; ++r)
    for (int off = 0; off < bytes; off += 64) __builtin_prefetch(p + r * stride + off, 0, 2);
}

// dst[n * T + t] = v[b, n, t0 + t] (B or C of one tile, state-major), reading along the contiguous axis.
inline void load_states(const View3& v, int64_t b, int64_t N, int64_t t0, int tn, float* __restrict dst) {
  if (v.h) {  // bfloat16: widened as it is copied
    const uint16_t* p = v.h + b * v.sb + t0 * v.st;
    for (int t = 0; t < tn; ++t)
      for (int64_t n = 0; n < N; ++n) dst[n * T + t] = bf16_to_float(p[t * v.st + n * v.sc]);
    return;
  }
  const float* p = v.p + b * v.sb + t0 * v.st;
  if (v.sc == 1) {
#if DNALLM_AVX512
    if (tn == T && N % 16 == 0) {  // a whole tile: 16 x 16 blocks transposed in registers
      for (int64_t n = 0; n < N; n += 16)
        for (int t = 0; t < T; t += 16) transpose16(p + t * v.st + n, v.st, dst + n * T + t, T);
      return;
    }
#endif
    for (int t = 0; t < tn; ++t)
      for (int64_t n = 0; n < N; ++n) dst[n * T + t] = p[t * v.st + n];
  } else {
    for (int64_t n = 0; n < N; ++n)
      for (int t = 0; t < tn; ++t) dst[n * T + t] = p[n * v.sc + t * v.st];
  }
}

struct Mamba1Args {
  View3 u, delta, z, B, C;
  float* y;  // (batch, L, d_inner) contiguous
  uint16_t* yh;  // the same in bfloat16 (then y is null)
  const float *A, *D, *bias;
  int64_t sA0, sA1, sD, sbias, L, N, d_inner;
  bool has_z, softplus, reverse;
};

// The kernels' view of mamba1_scan's arguments (empty D, z, delta_bias stand for None).
Mamba1Args mamba1_args(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                       const at::Tensor& C, const at::Tensor& D, const at::Tensor& z,
                       const at::Tensor& delta_bias, bool softplus, float* y, bool reverse, uint16_t* yh = nullptr) {
  const bool has_z = z.numel() > 0, has_D = D.numel() > 0, has_bias = delta_bias.numel() > 0;
  return {view3(u), view3(delta), has_z ? view3(z) : view3(u), view3(B), view3(C), y, yh, A.data_ptr<float>(),
          has_D ? D.data_ptr<float>() : nullptr, has_bias ? delta_bias.data_ptr<float>() : nullptr, A.stride(0),
          A.stride(1), has_D ? D.stride(0) : 0, has_bias ? delta_bias.stride(0) : 0, u.size(2), A.size(1), u.size(1),
          has_z, softplus, reverse};
}

// Advance NBV states of DC channels over one time tile (backwards in time if REV); add <C_t, s_t> to yt.
// dt2 = Δ·log2(e), so exp(Δa) = 2^(dt2·a).
#if DNALLM_AVX512
// The state rows stay in registers for the whole tile. Per token and 16 channels, Δ·log2(e), Δ·u and y are loaded
// once for all NBV states, and each (16 channels × 1 state) update costs 13 vector instructions: 1 multiply (the
// exponent), 9 for 2^x, a multiply and an FMA for the state, an FMA for y.
template <int DC, int NBV, bool REV>
inline void scan_states(float* __restrict s, const float* __restrict a, const float (&dt2)[T][DC],
                        const float (&du)[T][DC], const float* __restrict Bt, const float* __restrict Ct,
                        float (&yt)[T][DC], int tn) {
  constexpr int V = DC / 16;
  __m512 sr[NBV][V];
#pragma GCC unroll 16
  for (int j = 0; j < NBV; ++j)
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) sr[j][v] = _mm512_loadu_ps(s + j * DC + v * 16);
  for (int step = 0; step < tn; ++step) {
    const int t = REV ? tn - 1 - step : step;
    __m512 bv[NBV], cv[NBV];
#pragma GCC unroll 16
    for (int j = 0; j < NBV; ++j) {
      bv[j] = _mm512_set1_ps(Bt[j * T + t]);
      cv[j] = _mm512_set1_ps(Ct[j * T + t]);
    }
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) {
      const __m512 d = _mm512_load_ps(&dt2[t][v * 16]), u = _mm512_load_ps(&du[t][v * 16]);
      __m512 y = _mm512_load_ps(&yt[t][v * 16]);
#pragma GCC unroll 16
      for (int j = 0; j < NBV; ++j) {
        const __m512 e = pow2_x16(_mm512_mul_ps(d, _mm512_loadu_ps(a + j * DC + v * 16)));
        sr[j][v] = _mm512_fmadd_ps(e, sr[j][v], _mm512_mul_ps(u, bv[j]));
        y = _mm512_fmadd_ps(sr[j][v], cv[j], y);
      }
      _mm512_store_ps(&yt[t][v * 16], y);
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < NBV; ++j)
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(s + j * DC + v * 16, sr[j][v]);
}
#else
template <int DC, int NBV, bool REV>
inline void scan_states(float* __restrict s, const float* __restrict a, const float (&dt2)[T][DC],
                        const float (&du)[T][DC], const float* __restrict Bt, const float* __restrict Ct,
                        float (&yt)[T][DC], int tn) {
  float sr[NBV][DC], ar[NBV][DC];
  for (int j = 0; j < NBV; ++j)
    for (int c = 0; c < DC; ++c) { sr[j][c] = s[j * DC + c]; ar[j][c] = a[j * DC + c]; }
  for (int step = 0; step < tn; ++step)
    for (int j = 0; j < NBV; ++j) {
      const int t = REV ? tn - 1 - step : step;
      const float bv = Bt[j * T + t], cv = Ct[j * T + t];
#pragma omp simd
      for (int c = 0; c < DC; ++c) {
        const float v = fexp2(dt2[t][c] * ar[j][c]) * sr[j][c] + du[t][c] * bv;
        sr[j][c] = v;
        yt[t][c] += v * cv;
      }
    }
  for (int j = 0; j < NBV; ++j)
    for (int c = 0; c < DC; ++c) s[j * DC + c] = sr[j][c];
}
#endif

// The whole sequence b for channels [c0, c0 + DC): the state (N x DC) stays in cache. DC channels are the SIMD
// axis; NB states are updated together in registers. REV: from the last position to the first.
template <int DC, int NB, bool REV>
void mamba1_block(const Mamba1Args& g, int64_t b, int64_t c0) {
  const int cn = (int)std::min<int64_t>(DC, g.d_inner - c0);
  const int64_t N = g.N;
  std::vector<float> s(N * DC, 0.f), a(N * DC, 0.f), Bt(N * T), Ct(N * T);
  float Dv[DC] = {0}, bias[DC] = {0};
  for (int c = 0; c < cn; ++c) {
    for (int64_t n = 0; n < N; ++n) a[n * DC + c] = g.A[(c0 + c) * g.sA0 + n * g.sA1];
    if (g.D) Dv[c] = g.D[(c0 + c) * g.sD];
    if (g.bias) bias[c] = g.bias[(c0 + c) * g.sbias];
  }
  alignas(64) float ut[T][DC], dt[T][DC], du[T][DC], zt[T][DC], yt[T][DC];
  const int64_t tiles = (g.L + T - 1) / T;
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int64_t t0 = (REV ? tiles - 1 - tile : tile) * T;
    const int tn = (int)std::min<int64_t>(T, g.L - t0);
    load_tile(g.u, b, c0, cn, t0, tn, ut);
    load_tile(g.delta, b, c0, cn, t0, tn, dt);
    if (g.has_z) load_tile(g.z, b, c0, cn, t0, tn, zt);
    if (tile + 1 < tiles) {  // the next tile's inputs arrive while this one is computed
      const int64_t next = (REV ? tiles - 2 - tile : tile + 1) * T;
      const int next_n = (int)std::min<int64_t>(T, g.L - next);
      prefetch_tile(g.u, b, c0, cn, next, next_n);
      prefetch_tile(g.delta, b, c0, cn, next, next_n);
      if (g.has_z) prefetch_tile(g.z, b, c0, cn, next, next_n);
    }
    for (int t = 0; t < tn; ++t) {
      if (g.softplus) {
#if DNALLM_AVX512
        for (int c = 0; c < DC; c += 16) {
          const __m512 raw = _mm512_add_ps(_mm512_load_ps(&dt[t][c]), _mm512_loadu_ps(&bias[c]));
          _mm512_store_ps(&dt[t][c], softplus_x16(raw));
        }
#else
#pragma omp simd
        for (int c = 0; c < DC; ++c) dt[t][c] = fsoftplus(dt[t][c] + bias[c]);
#endif
      } else {
#pragma omp simd
        for (int c = 0; c < DC; ++c) dt[t][c] += bias[c];
      }
#pragma omp simd
      for (int c = 0; c < DC; ++c) {
        const float d = c < cn ? dt[t][c] : 0.f;  // padded channels stay exactly zero
        du[t][c] = d * ut[t][c];
        dt[t][c] = d * kLog2e;  // the scan takes exp as a power of 2
        yt[t][c] = 0.f;
      }
    }
    load_states(g.B, b, N, t0, tn, Bt.data());
    load_states(g.C, b, N, t0, tn, Ct.data());
    int64_t n0 = 0;
    for (; n0 + NB <= N; n0 += NB)
      scan_states<DC, NB, REV>(s.data() + n0 * DC, a.data() + n0 * DC, dt, du, Bt.data() + n0 * T, Ct.data() + n0 * T, yt, tn);
    for (; n0 < N; ++n0)
      scan_states<DC, 1, REV>(s.data() + n0 * DC, a.data() + n0 * DC, dt, du, Bt.data() + n0 * T, Ct.data() + n0 * T, yt, tn);
    for (int t = 0; t < tn; ++t) {
      const int64_t row = (b * g.L + t0 + t) * g.d_inner + c0;
      if (g.has_z) {
#if DNALLM_AVX512
        for (int c = 0; c < DC; c += 16) {
          const __m512 y =
              _mm512_fmadd_ps(_mm512_loadu_ps(&Dv[c]), _mm512_load_ps(&ut[t][c]), _mm512_load_ps(&yt[t][c]));
          _mm512_store_ps(&yt[t][c], _mm512_mul_ps(y, silu_x16(_mm512_load_ps(&zt[t][c]))));
        }
#else
#pragma omp simd
        for (int c = 0; c < DC; ++c) yt[t][c] = (yt[t][c] + Dv[c] * ut[t][c]) * fsilu(zt[t][c]);
#endif
      } else {
#pragma omp simd
        for (int c = 0; c < DC; ++c) yt[t][c] += Dv[c] * ut[t][c];
      }
      if (g.yh) {  // bfloat16 out: rounded once, from the float32 sum
        uint16_t* out = g.yh + row;
        if (cn == DC) {
#pragma omp simd
          for (int c = 0; c < DC; ++c) out[c] = float_to_bf16(yt[t][c]);
        } else {
          for (int c = 0; c < cn; ++c) out[c] = float_to_bf16(yt[t][c]);
        }
        continue;
      }
      float* out = g.y + row;
      if (cn == DC) {
#pragma omp simd
        for (int c = 0; c < DC; ++c) out[c] = yt[t][c];
      } else {
        for (int c = 0; c < cn; ++c) out[c] = yt[t][c];
      }
    }
  }
}
template <int DC, int NB>
void run_mamba1(const Mamba1Args& g, int64_t batch) {
  const int64_t blocks = (g.d_inner + DC - 1) / DC;
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    for (int64_t i = begin; i < end; ++i) {
      if (g.reverse) {
        mamba1_block<DC, NB, true>(g, i / blocks, (i % blocks) * DC);
      } else {
        mamba1_block<DC, NB, false>(g, i / blocks, (i % blocks) * DC);
      }
    }
  });
}

// e[c] = exp(dt[c] · a[c]) = 2^(dt[c] · a2[c]) for c < DC, with a2 = a·log2(e): the decays, as the forward scan
// computes them (pow2_x16 on AVX-512).
template <int DC>
inline void decay_row(const float* __restrict dt, const float* __restrict a2, float* __restrict e) {
#if DNALLM_AVX512
  static_assert(DC % 16 == 0, "whole vectors");
  for (int c = 0; c < DC; c += 16)
    _mm512_storeu_ps(e + c, pow2_x16(_mm512_mul_ps(_mm512_loadu_ps(dt + c), _mm512_loadu_ps(a2 + c))));
#else
#pragma omp simd
  for (int c = 0; c < DC; ++c) e[c] = fexp2(dt[c] * a2[c]);
#endif
}

// dA, dD, ddelta_bias sum over the batch, whose other elements other tasks handle: a block adds its sums atomically.
template <int DC>
void add_block_sums(float* dA, float* dD, float* dbias, const float* dAc, const float* dDc, const float* dbc, int64_t c0,
                    int cn, int64_t N) {
  for (int c = 0; c < cn; ++c) {
    for (int64_t n = 0; n < N; ++n) {
#pragma omp atomic
      dA[(c0 + c) * N + n] += dAc[n * DC + c];
    }
#pragma omp atomic
    dD[c0 + c] += dDc[c];
#pragma omp atomic
    dbias[c0 + c] += dbc[c];
  }
}

#if DNALLM_AVX512
// 1 / (1 + exp(-x)) for 16 lanes, the division as a reciprocal estimate and one Newton step (as silu_x16).
inline __m512 sigmoid_x16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 d = _mm512_add_ps(
      one, exp_x16(_mm512_max_ps(_mm512_min_ps(_mm512_sub_ps(_mm512_setzero_ps(), x), _mm512_set1_ps(87.3f)),
                                 _mm512_set1_ps(-87.3f))));
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
}

// lane i of the result = the sum of r[i]'s 16 lanes: 16 horizontal sums in 45 instructions (unpacks, 128-bit
// shuffles and adds, a transpose that adds as it goes) instead of ~8 each.
inline __m512 sum16_x16(__m512 (&r)[16]) {
  __m512 a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i)
    a[i] = _mm512_add_ps(_mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]), _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {
    const __m512d x = _mm512_castps_pd(a[2 * i]), y = _mm512_castps_pd(a[2 * i + 1]);
    b[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  for (int i = 0; i < 2; ++i)
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xdd));
}

// Pass 1 of the backward: advance NBV states (rows of DC channels, in registers) over one tile, as the forward
// scan does, without the output.
template <int DC, int NBV, bool REV>
inline void bwd_advance(float* __restrict s, const float* __restrict a2, const float (&dt)[T][DC],
                        const float (&du)[T][DC], const float* __restrict Bt, int tn) {
  constexpr int V = DC / 16;
  __m512 sr[NBV][V];
#pragma GCC unroll 16
  for (int j = 0; j < NBV; ++j)
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) sr[j][v] = _mm512_loadu_ps(s + j * DC + v * 16);
  for (int step = 0; step < tn; ++step) {
    const int t = REV ? tn - 1 - step : step;
    __m512 bv[NBV];
#pragma GCC unroll 16
    for (int j = 0; j < NBV; ++j) bv[j] = _mm512_set1_ps(Bt[j * T + t]);
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) {
      const __m512 d = _mm512_load_ps(&dt[t][v * 16]), u = _mm512_load_ps(&du[t][v * 16]);
#pragma GCC unroll 16
      for (int j = 0; j < NBV; ++j) {
        const __m512 e = pow2_x16(_mm512_mul_ps(d, _mm512_loadu_ps(a2 + j * DC + v * 16)));
        sr[j][v] = _mm512_fmadd_ps(e, sr[j][v], _mm512_mul_ps(u, bv[j]));
      }
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < NBV; ++j)
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(s + j * DC + v * 16, sr[j][v]);
}

// Pass 2's recomputation of NBV states n0 .. n0 + NBV - 1 over one tile from its checkpoint s: adds <C_t, h_t> to
// y0, keeps the decays e and e·h_(t-1) of step `step` at E, EP[(step · NBV + j) · DC] for the adjoint pass, and
// leaves Σ over this tile's channels of gy·h_t, 16 lanes to sum, at Pc[(t · N + n) · 16] (dC).
template <int DC, int NBV, bool REV>
inline void bwd_recompute(const float* __restrict s, const float* __restrict a2, const float (&dt)[T][DC],
                          const float (&du)[T][DC], const float (&gy)[T][DC], const float* __restrict Bt,
                          const float* __restrict Ct, float (&y0)[T][DC], float* __restrict E, float* __restrict EP,
                          float* __restrict Pc, int64_t N, int tn) {  // E, EP rows: NBV states per step
  constexpr int V = DC / 16;
  __m512 sr[NBV][V];
#pragma GCC unroll 16
  for (int j = 0; j < NBV; ++j)
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) sr[j][v] = _mm512_loadu_ps(s + j * DC + v * 16);
  for (int step = 0; step < tn; ++step) {
    const int t = REV ? tn - 1 - step : step;
    __m512 bv[NBV], cv[NBV], dc[NBV];
#pragma GCC unroll 16
    for (int j = 0; j < NBV; ++j) {
      bv[j] = _mm512_set1_ps(Bt[j * T + t]);
      cv[j] = _mm512_set1_ps(Ct[j * T + t]);
      dc[j] = _mm512_setzero_ps();
    }
    float* e_row = E + step * NBV * DC;
    float* ep_row = EP + step * NBV * DC;
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) {
      const __m512 d = _mm512_load_ps(&dt[t][v * 16]), u = _mm512_load_ps(&du[t][v * 16]);
      const __m512 g = _mm512_load_ps(&gy[t][v * 16]);
      __m512 y = _mm512_load_ps(&y0[t][v * 16]);
#pragma GCC unroll 16
      for (int j = 0; j < NBV; ++j) {
        const __m512 e = pow2_x16(_mm512_mul_ps(d, _mm512_loadu_ps(a2 + j * DC + v * 16)));
        const __m512 ep = _mm512_mul_ps(e, sr[j][v]);
        _mm512_storeu_ps(e_row + j * DC + v * 16, e);
        _mm512_storeu_ps(ep_row + j * DC + v * 16, ep);
        sr[j][v] = _mm512_fmadd_ps(u, bv[j], ep);
        y = _mm512_fmadd_ps(sr[j][v], cv[j], y);
        dc[j] = _mm512_fmadd_ps(g, sr[j][v], dc[j]);
      }
      _mm512_store_ps(&y0[t][v * 16], y);
    }
#pragma GCC unroll 16
    for (int j = 0; j < NBV; ++j) _mm512_storeu_ps(Pc + (t * N + j) * 16, dc[j]);
  }
}

// The adjoint pass over one tile for NBV states (their adjoints dh and dA sums in registers), backwards in the
// recurrence's order. Per token it adds Σ_n adj·B_n to w and Σ_n adj·A_n·e·h_(t-1) to ga (ddelta = ga + u·w and
// du = dt·w are formed after all states), and leaves Σ over channels of adj·Δu, 16 lanes to sum, at Pb (dB).
// 7 vector instructions per (16 channels × 1 state) update.
template <int DC, int NBV, bool REV>
inline void bwd_adjoint(float* __restrict dh, float* __restrict dA, const float* __restrict a,
                        const float (&dt)[T][DC], const float (&du)[T][DC], const float (&gy)[T][DC],
                        const float* __restrict Bt, const float* __restrict Ct, const float* __restrict E,
                        const float* __restrict EP, float (&w)[T][DC], float (&ga)[T][DC], float* __restrict Pb,
                        int64_t N, int tn) {
  constexpr int V = DC / 16;
  __m512 hr[NBV][V], ar[NBV][V];
#pragma GCC unroll 16
  for (int j = 0; j < NBV; ++j)
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) {
      hr[j][v] = _mm512_loadu_ps(dh + j * DC + v * 16);
      ar[j][v] = _mm512_loadu_ps(dA + j * DC + v * 16);
    }
  for (int step = tn - 1; step >= 0; --step) {
    const int t = REV ? tn - 1 - step : step;
    __m512 bv[NBV], cv[NBV], db[NBV];
#pragma GCC unroll 16
    for (int j = 0; j < NBV; ++j) {
      bv[j] = _mm512_set1_ps(Bt[j * T + t]);
      cv[j] = _mm512_set1_ps(Ct[j * T + t]);
      db[j] = _mm512_setzero_ps();
    }
    const float* e_row = E + step * NBV * DC;
    const float* ep_row = EP + step * NBV * DC;
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) {
      const __m512 g = _mm512_load_ps(&gy[t][v * 16]), u = _mm512_load_ps(&du[t][v * 16]);
      const __m512 d = _mm512_load_ps(&dt[t][v * 16]);
      __m512 wv = _mm512_load_ps(&w[t][v * 16]), gv = _mm512_load_ps(&ga[t][v * 16]);
#pragma GCC unroll 16
      for (int j = 0; j < NBV; ++j) {
        const __m512 adj = _mm512_fmadd_ps(g, cv[j], hr[j][v]);
        const __m512 x = _mm512_mul_ps(adj, _mm512_loadu_ps(ep_row + j * DC + v * 16));
        wv = _mm512_fmadd_ps(adj, bv[j], wv);
        gv = _mm512_fmadd_ps(x, _mm512_loadu_ps(a + j * DC + v * 16), gv);
        ar[j][v] = _mm512_fmadd_ps(x, d, ar[j][v]);
        db[j] = _mm512_fmadd_ps(adj, u, db[j]);
        hr[j][v] = _mm512_mul_ps(adj, _mm512_loadu_ps(e_row + j * DC + v * 16));
      }
      _mm512_store_ps(&w[t][v * 16], wv);
      _mm512_store_ps(&ga[t][v * 16], gv);
    }
#pragma GCC unroll 16
    for (int j = 0; j < NBV; ++j) _mm512_storeu_ps(Pb + (t * N + j) * 16, db[j]);
  }
#pragma GCC unroll 16
  for (int j = 0; j < NBV; ++j)
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) {
      _mm512_storeu_ps(dh + j * DC + v * 16, hr[j][v]);
      _mm512_storeu_ps(dA + j * DC + v * 16, ar[j][v]);
    }
}

// Backward pass of mamba1_scan for channels [c0, c0 + DC) of sequence b, AVX-512. Pass 1 runs the scan (states in
// registers, as the forward kernel) keeping only the state entering each time tile; pass 2 walks the tiles
// backwards: per register block of states, it recomputes the tile's states from its checkpoint (keeping each step's
// decays e and e·h_(t-1), and summing gy·h over channels for dC), then carries the adjoint state dh backwards in time
// with dh and the dA sums in registers (the kept decays, T x NB x DC, stay in the near caches). The sums over
// channels for dB and dC are left as 16-lane vectors per (token, state) and reduced 16 states at a time (sum16_x16). This block's dB, dC go to dBg, dCg (L x N), every element written once.
template <int DC>
void mamba1_backward_block(const Mamba1Args& g, const View3& gv, int64_t b, int64_t c0, float* du_out, float* ddelta_out,
                           float* dz_out, float* dA, float* dD, float* dbias, float* dBg, float* dCg) {
  constexpr int NB = DC == 64 ? 2 : 4;  // states per register block, as the forward
  const int cn = (int)std::min<int64_t>(DC, g.d_inner - c0);
  const int64_t N = g.N, tiles = (g.L + T - 1) / T;
  std::vector<float> a(N * DC, 0.f), s(N * DC, 0.f), dh(N * DC, 0.f), dAc(N * DC, 0.f), ck(tiles * N * DC);
  std::vector<float> E(T * NB * DC), EP(T * NB * DC), Pb(T * N * 16), Pc(T * N * 16), a2(N * DC), Bt(N * T), Ct(N * T);
  alignas(64) float Dv[DC] = {0}, bias[DC] = {0}, dDc[DC] = {0}, dbc[DC] = {0};
  for (int c = 0; c < cn; ++c) {
    for (int64_t n = 0; n < N; ++n) a[n * DC + c] = g.A[(c0 + c) * g.sA0 + n * g.sA1];
    if (g.D) Dv[c] = g.D[(c0 + c) * g.sD];
    if (g.bias) bias[c] = g.bias[(c0 + c) * g.sbias];
  }
  for (int64_t i = 0; i < N * DC; ++i) a2[i] = a[i] * kLog2e;
  alignas(64) float ut[T][DC], dt[T][DC], sg[T][DC], du[T][DC], zt[T][DC], gt[T][DC], gy[T][DC], w[T][DC], ga[T][DC];
  alignas(64) float y0[T][DC];
  // dt = softplus(delta + bias) (or delta + bias), sg = d dt / d delta, du = dt * u; padded channels stay zero
  auto load_steps = [&](int64_t t0, int tn, bool need_sg) {
    load_tile(g.u, b, c0, cn, t0, tn, ut);
    load_tile(g.delta, b, c0, cn, t0, tn, dt);
    const __m512 one = _mm512_set1_ps(1.f);
    for (int t = 0; t < tn; ++t)
      for (int c = 0; c < DC; c += 16) {
        const __mmask16 real = c + 16 <= cn ? (__mmask16)0xffff : (__mmask16)((1u << std::max(0, cn - c)) - 1);
        const __m512 raw = _mm512_add_ps(_mm512_load_ps(&dt[t][c]), _mm512_load_ps(&bias[c]));
        const __m512 d = _mm512_maskz_mov_ps(real, g.softplus ? softplus_x16(raw) : raw);
        _mm512_store_ps(&dt[t][c], d);
        _mm512_store_ps(&du[t][c], _mm512_mul_ps(d, _mm512_load_ps(&ut[t][c])));
        if (need_sg)
          _mm512_store_ps(&sg[t][c], g.softplus ? sigmoid_x16(raw) : one);
      }
    load_states(g.B, b, N, t0, tn, Bt.data());
  };
  const bool rev = g.reverse;
  for (int64_t kk = 0; kk < tiles; ++kk) {  // pass 1: the state entering every tile
    const int64_t k = rev ? tiles - 1 - kk : kk, t0 = k * T;
    const int tn = (int)std::min<int64_t>(T, g.L - t0);
    std::copy(s.begin(), s.end(), ck.begin() + k * N * DC);
    if (kk + 1 == tiles) break;  // the state after the last tile is not needed
    load_steps(t0, tn, false);
    int64_t n0 = 0;
    for (; n0 + NB <= N; n0 += NB)
      rev ? bwd_advance<DC, NB, true>(&s[n0 * DC], &a2[n0 * DC], dt, du, &Bt[n0 * T], tn)
          : bwd_advance<DC, NB, false>(&s[n0 * DC], &a2[n0 * DC], dt, du, &Bt[n0 * T], tn);
    for (; n0 < N; ++n0)
      rev ? bwd_advance<DC, 1, true>(&s[n0 * DC], &a2[n0 * DC], dt, du, &Bt[n0 * T], tn)
          : bwd_advance<DC, 1, false>(&s[n0 * DC], &a2[n0 * DC], dt, du, &Bt[n0 * T], tn);
  }
  for (int64_t kk = tiles - 1; kk >= 0; --kk) {  // pass 2: backwards over tiles
    const int64_t k = rev ? tiles - 1 - kk : kk, t0 = k * T;
    const int tn = (int)std::min<int64_t>(T, g.L - t0);
    load_steps(t0, tn, true);
    load_states(g.C, b, N, t0, tn, Ct.data());
    load_tile(gv, b, c0, cn, t0, tn, gt);
    if (g.has_z) load_tile(g.z, b, c0, cn, t0, tn, zt);
    for (int t = 0; t < tn; ++t)  // the gate y = y0 · silu(z): gy = dL/dy0 (before y0 is known)
      for (int c = 0; c < DC; c += 16) {
        const __mmask16 real = c + 16 <= cn ? (__mmask16)0xffff : (__mmask16)((1u << std::max(0, cn - c)) - 1);
        __m512 gyv = _mm512_maskz_mov_ps(real, _mm512_load_ps(&gt[t][c]));
        if (g.has_z) gyv = _mm512_mul_ps(gyv, silu_x16(_mm512_load_ps(&zt[t][c])));
        _mm512_store_ps(&gy[t][c], gyv);
        _mm512_store_ps(&y0[t][c], _mm512_mul_ps(_mm512_load_ps(&Dv[c]), _mm512_load_ps(&ut[t][c])));
        _mm512_store_ps(&w[t][c], _mm512_setzero_ps());
        _mm512_store_ps(&ga[t][c], _mm512_setzero_ps());
      }
    // per register block of states: its recomputation, then its adjoint pass, while its decays are in cache
    const float* ckk = &ck[k * N * DC];
    for (int64_t n0 = 0; n0 < N;) {
      const float* ck0 = ckk + n0 * DC;
      float *dh0 = &dh[n0 * DC], *dA0 = &dAc[n0 * DC];
      const float *a0 = &a[n0 * DC], *a20 = &a2[n0 * DC], *B0 = &Bt[n0 * T], *C0 = &Ct[n0 * T];
      if (n0 + NB <= N) {
        if (rev) {
          bwd_recompute<DC, NB, true>(ck0, a20, dt, du, gy, B0, C0, y0, E.data(), EP.data(), &Pc[n0 * 16], N, tn);
          bwd_adjoint<DC, NB, true>(dh0, dA0, a0, dt, du, gy, B0, C0, E.data(), EP.data(), w, ga, &Pb[n0 * 16], N, tn);
        } else {
          bwd_recompute<DC, NB, false>(ck0, a20, dt, du, gy, B0, C0, y0, E.data(), EP.data(), &Pc[n0 * 16], N, tn);
          bwd_adjoint<DC, NB, false>(dh0, dA0, a0, dt, du, gy, B0, C0, E.data(), EP.data(), w, ga, &Pb[n0 * 16], N, tn);
        }
        n0 += NB;
      } else {
        if (rev) {
          bwd_recompute<DC, 1, true>(ck0, a20, dt, du, gy, B0, C0, y0, E.data(), EP.data(), &Pc[n0 * 16], N, tn);
          bwd_adjoint<DC, 1, true>(dh0, dA0, a0, dt, du, gy, B0, C0, E.data(), EP.data(), w, ga, &Pb[n0 * 16], N, tn);
        } else {
          bwd_recompute<DC, 1, false>(ck0, a20, dt, du, gy, B0, C0, y0, E.data(), EP.data(), &Pc[n0 * 16], N, tn);
          bwd_adjoint<DC, 1, false>(dh0, dA0, a0, dt, du, gy, B0, C0, E.data(), EP.data(), w, ga, &Pb[n0 * 16], N, tn);
        }
        n0 += 1;
      }
    }
    for (int t = 0; t < tn; ++t) {
      const int64_t row = (b * g.L + t0 + t) * g.d_inner + c0;
      alignas(64) float gu_row[DC], dd_row[DC], dz_row[DC];
      for (int c = 0; c < DC; c += 16) {
        const __m512 gyv = _mm512_load_ps(&gy[t][c]), uv = _mm512_load_ps(&ut[t][c]), wv = _mm512_load_ps(&w[t][c]);
        _mm512_store_ps(&dDc[c], _mm512_fmadd_ps(gyv, uv, _mm512_load_ps(&dDc[c])));
        _mm512_store_ps(&gu_row[c], _mm512_fmadd_ps(_mm512_load_ps(&dt[t][c]), wv,
                                                    _mm512_mul_ps(gyv, _mm512_load_ps(&Dv[c]))));
        const __m512 draw = _mm512_mul_ps(_mm512_fmadd_ps(uv, wv, _mm512_load_ps(&ga[t][c])),
                                          _mm512_load_ps(&sg[t][c]));
        _mm512_store_ps(&dbc[c], _mm512_add_ps(_mm512_load_ps(&dbc[c]), draw));
        _mm512_store_ps(&dd_row[c], draw);
        if (g.has_z) {  // dz = g · y0 · silu'(z), silu'(z) = sg(z) · (1 + z · (1 - sg(z)))
          const __m512 zz = _mm512_load_ps(&zt[t][c]), one = _mm512_set1_ps(1.f);
          const __m512 sgz = sigmoid_x16(zz);
          const __m512 dsilu = _mm512_mul_ps(sgz, _mm512_fmadd_ps(zz, _mm512_sub_ps(one, sgz), one));
          _mm512_store_ps(&dz_row[c], _mm512_mul_ps(_mm512_mul_ps(_mm512_load_ps(&gt[t][c]), _mm512_load_ps(&y0[t][c])),
                                                    dsilu));
        }
      }
      if (cn == DC) {
        for (int c = 0; c < DC; c += 16) {
          _mm512_storeu_ps(du_out + row + c, _mm512_load_ps(&gu_row[c]));
          _mm512_storeu_ps(ddelta_out + row + c, _mm512_load_ps(&dd_row[c]));
          if (g.has_z) _mm512_storeu_ps(dz_out + row + c, _mm512_load_ps(&dz_row[c]));
        }
      } else {
        for (int c = 0; c < cn; ++c) {
          du_out[row + c] = gu_row[c];
          ddelta_out[row + c] = dd_row[c];
          if (g.has_z) dz_out[row + c] = dz_row[c];
        }
      }
      float* dBrow = dBg + (t0 + t) * N;
      float* dCrow = dCg + (t0 + t) * N;
      int64_t n = 0;
      for (; n + 16 <= N; n += 16) {  // 16 states' sums over channels at once
        __m512 rb[16], rc[16];
        for (int i = 0; i < 16; ++i) {
          rb[i] = _mm512_loadu_ps(&Pb[(t * N + n + i) * 16]);
          rc[i] = _mm512_loadu_ps(&Pc[(t * N + n + i) * 16]);
        }
        _mm512_storeu_ps(dBrow + n, sum16_x16(rb));
        _mm512_storeu_ps(dCrow + n, sum16_x16(rc));
      }
      for (; n < N; ++n) {
        dBrow[n] = _mm512_reduce_add_ps(_mm512_loadu_ps(&Pb[(t * N + n) * 16]));
        dCrow[n] = _mm512_reduce_add_ps(_mm512_loadu_ps(&Pc[(t * N + n) * 16]));
      }
    }
  }
  add_block_sums<DC>(dA, dD, dbias, dAc.data(), dDc, dbc, c0, cn, N);
}
#else
// Backward pass of mamba1_scan for channels [c0, c0 + DC) of sequence b. Pass 1 runs the scan keeping only the state
// entering each time tile; pass 2 walks the tiles backwards, recomputes a tile's states from its checkpoint and
// carries the adjoint state dh backwards in time. Channels are the SIMD axis, as in the forward kernel. dB and dC
// sum over channels: this block's sums go to dBg, dCg (L x N), every element written once. The decays of a tile are
// kept from its recomputation for the adjoint pass (each is computed twice: in pass 1 and in pass 2).
template <int DC>
void mamba1_backward_block(const Mamba1Args& g, const View3& gv, int64_t b, int64_t c0, float* du_out, float* ddelta_out,
                           float* dz_out, float* dA, float* dD, float* dbias, float* dBg, float* dCg) {
  const int cn = (int)std::min<int64_t>(DC, g.d_inner - c0);
  const int64_t N = g.N, tiles = (g.L + T - 1) / T;
  std::vector<float> a(N * DC, 0.f), s(N * DC, 0.f), dh(N * DC, 0.f), dAc(N * DC, 0.f), ck(tiles * N * DC);
  std::vector<float> S((T + 1) * N * DC), E(T * N * DC), a2(N * DC), Bt(N * T), Ct(N * T);
  float Dv[DC] = {0}, bias[DC] = {0}, dDc[DC] = {0}, dbc[DC] = {0};
  for (int c = 0; c < cn; ++c) {
    for (int64_t n = 0; n < N; ++n) a[n * DC + c] = g.A[(c0 + c) * g.sA0 + n * g.sA1];
    if (g.D) Dv[c] = g.D[(c0 + c) * g.sD];
    if (g.bias) bias[c] = g.bias[(c0 + c) * g.sbias];
  }
  for (int64_t i = 0; i < N * DC; ++i) a2[i] = a[i] * kLog2e;
  alignas(64) float ut[T][DC], dt[T][DC], sg[T][DC], du[T][DC], zt[T][DC], gt[T][DC], gy[T][DC], gu[T][DC], gd[T][DC];
  // dt = softplus(delta + bias) (or delta + bias), sg = d dt / d delta, du = dt * u; padded channels stay zero
  auto load_steps = [&](int64_t t0, int tn) {
    load_tile(g.u, b, c0, cn, t0, tn, ut);
    load_tile(g.delta, b, c0, cn, t0, tn, dt);
    for (int t = 0; t < tn; ++t) {
#pragma omp simd
      for (int c = 0; c < DC; ++c) {
        const float raw = dt[t][c] + bias[c];
        const float d = g.softplus ? fsoftplus(raw) : raw;
        const bool real = c < cn;
        dt[t][c] = real ? d : 0.f;
        sg[t][c] = g.softplus ? 1.f / (1.f + fexp(-raw)) : 1.f;
        du[t][c] = real ? d * ut[t][c] : 0.f;
      }
    }
    load_states(g.B, b, N, t0, tn, Bt.data());
  };
  // reverse: the recurrence runs from the last position to the first; step j of a tile is position t = tn - 1 - j
  const bool rev = g.reverse;
  for (int64_t kk = 0; kk < tiles; ++kk) {  // pass 1: the state entering every tile
    const int64_t k = rev ? tiles - 1 - kk : kk, t0 = k * T;
    const int tn = (int)std::min<int64_t>(T, g.L - t0);
    std::copy(s.begin(), s.end(), ck.begin() + k * N * DC);
    load_steps(t0, tn);
    alignas(64) float e[DC];
    for (int64_t n = 0; n < N; ++n)
      for (int j = 0; j < tn; ++j) {
        const int t = rev ? tn - 1 - j : j;
        const float bv = Bt[n * T + t];
        decay_row<DC>(dt[t], &a2[n * DC], e);
#pragma omp simd
        for (int c = 0; c < DC; ++c) s[n * DC + c] = e[c] * s[n * DC + c] + du[t][c] * bv;
      }
  }
  for (int64_t kk = tiles - 1; kk >= 0; --kk) {  // pass 2: backwards over tiles
    const int64_t k = rev ? tiles - 1 - kk : kk, t0 = k * T;
    const int tn = (int)std::min<int64_t>(T, g.L - t0);
    load_steps(t0, tn);
    load_states(g.C, b, N, t0, tn, Ct.data());
    load_tile(gv, b, c0, cn, t0, tn, gt);
    if (g.has_z) load_tile(g.z, b, c0, cn, t0, tn, zt);
    std::copy(ck.begin() + k * N * DC, ck.begin() + (k + 1) * N * DC, S.begin());  // S[j + 1] = state after step j
    float y0[T][DC];
    for (int t = 0; t < tn; ++t)
#pragma omp simd
      for (int c = 0; c < DC; ++c) y0[t][c] = Dv[c] * ut[t][c];
    for (int j = 0; j < tn; ++j)
      for (int64_t n = 0; n < N; ++n) {
        const int t = rev ? tn - 1 - j : j;
        const float bv = Bt[n * T + t], cv = Ct[n * T + t];
        const float* prev = &S[(j * N + n) * DC];
        float* next = &S[((j + 1) * N + n) * DC];
        float* e = &E[(j * N + n) * DC];
        decay_row<DC>(dt[t], &a2[n * DC], e);
#pragma omp simd
        for (int c = 0; c < DC; ++c) {
          next[c] = e[c] * prev[c] + du[t][c] * bv;
          y0[t][c] += next[c] * cv;
        }
      }
    for (int t = 0; t < tn; ++t) {  // the gate: y = y0 * silu(z)
#pragma omp simd
      for (int c = 0; c < DC; ++c) {
        const float real = c < cn ? 1.f : 0.f;
        if (g.has_z) {
          const float zz = zt[t][c], sgz = 1.f / (1.f + fexp(-zz));
          gy[t][c] = real * gt[t][c] * zz * sgz;
          zt[t][c] = real * gt[t][c] * y0[t][c] * sgz * (1.f + zz * (1.f - sgz));  // dz
        } else {
          gy[t][c] = real * gt[t][c];
        }
        dDc[c] += gy[t][c] * ut[t][c];
        gu[t][c] = gy[t][c] * Dv[c];
        gd[t][c] = 0.f;
      }
    }
    for (int j = tn - 1; j >= 0; --j) {
      const int t = rev ? tn - 1 - j : j;
      for (int64_t n = 0; n < N; ++n) {
        const float bv = Bt[n * T + t], cv = Ct[n * T + t];
        const float* prev = &S[(j * N + n) * DC];
        const float* cur = &S[((j + 1) * N + n) * DC];
        float* dhn = &dh[n * DC];
        float* dAn = &dAc[n * DC];
        const float* an = &a[n * DC];
        const float* ej = &E[(j * N + n) * DC];
        float dc = 0.f, db = 0.f;
#pragma omp simd reduction(+ : dc, db)
        for (int c = 0; c < DC; ++c) {
          const float e = ej[c];
          const float adj = dhn[c] + gy[t][c] * cv;
          dc += gy[t][c] * cur[c];
          gd[t][c] += adj * (an[c] * e * prev[c] + bv * ut[t][c]);
          dAn[c] += adj * dt[t][c] * e * prev[c];
          db += adj * du[t][c];
          gu[t][c] += adj * dt[t][c] * bv;
          dhn[c] = adj * e;
        }
        dCg[(t0 + t) * N + n] = dc;
        dBg[(t0 + t) * N + n] = db;
      }
    }
    for (int t = 0; t < tn; ++t) {
      const int64_t row = (b * g.L + t0 + t) * g.d_inner + c0;
      for (int c = 0; c < cn; ++c) {
        const float draw = gd[t][c] * sg[t][c];
        dbc[c] += draw;
        du_out[row + c] = gu[t][c];
        ddelta_out[row + c] = draw;
        if (g.has_z) dz_out[row + c] = zt[t][c];
      }
    }
  }
  add_block_sums<DC>(dA, dD, dbias, dAc.data(), dDc, dbc, c0, cn, N);
}
#endif
}  // namespace

// Mamba-1 selective scan. u, delta, z: (batch, d_inner, L) any strides; A: (d_inner, N); B, C: (batch, N, L);
// D, delta_bias: (d_inner,); empty tensors stand for None. Returns y as (batch, L, d_inner) in u's dtype. u, delta, z,
// B, C may each be float32 or bfloat16 (A, D, delta_bias float32): the state, exp and sums stay float32.
// reverse: the recurrence runs from the last position to the first (the scan of the time-reversed input, reversed).
at::Tensor mamba1_scan(at::Tensor u, at::Tensor delta, at::Tensor A, at::Tensor B, at::Tensor C, at::Tensor D,
                       at::Tensor z, at::Tensor delta_bias, bool delta_softplus, bool reverse) {
  const int64_t batch = u.size(0), d_inner = u.size(1), L = u.size(2);
  auto y = at::empty({batch, L, d_inner}, u.options());
  const bool bf16_out = is_bf16(u, "mamba1_scan's u");
  const Mamba1Args g = mamba1_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                   bf16_out ? nullptr : y.data_ptr<float>(), reverse,
                                   bf16_out ? reinterpret_cast<uint16_t*>(y.data_ptr()) : nullptr);
  // 64-channel tasks read longer contiguous rows (faster); 32-channel tasks when 64 would leave threads idle.
  if (batch * ((d_inner + 63) / 64) >= at::get_num_threads()) {
    run_mamba1<64, 2>(g, batch);
  } else {
    run_mamba1<32, 4>(g, batch);
  }
  return y;
}

namespace {
// The per-block pass of mamba1_scan_backward with DC-channel tasks: fills du, ddelta, dz, dA, dD, dbias and the
// blocks' parts of dB, dC (batch, blocks, L, N).
template <int DC>
void run_mamba1_backward(const Mamba1Args& g, const View3& gv, int64_t batch, at::Tensor& du, at::Tensor& ddelta,
                         at::Tensor& dz, at::Tensor& dA, at::Tensor& dD, at::Tensor& dbias, at::Tensor& dBp,
                         at::Tensor& dCp) {
  const int64_t blocks = (g.d_inner + DC - 1) / DC, LN = g.L * g.N;
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / blocks, blk = i % blocks;
      mamba1_backward_block<DC>(g, gv, b, blk * DC, du.data_ptr<float>(), ddelta.data_ptr<float>(), dz.data_ptr<float>(),
                                dA.data_ptr<float>(), dD.data_ptr<float>(), dbias.data_ptr<float>(),
                                dBp.data_ptr<float>() + i * LN, dCp.data_ptr<float>() + i * LN);
    }
  });
}
}  // namespace

// Gradients of mamba1_scan (same inputs, plus grad: (batch, d_inner, L) any strides; reverse as mamba1_scan's).
// Returns du, ddelta, dz as (batch, L, d_inner), dA (d_inner, N), dB, dC (batch, L, N) and dD, ddelta_bias (d_inner,).
std::vector<at::Tensor> mamba1_scan_backward(at::Tensor u, at::Tensor delta, at::Tensor A, at::Tensor B, at::Tensor C,
                                             at::Tensor D, at::Tensor z, at::Tensor delta_bias, bool delta_softplus,
                                             at::Tensor grad, bool reverse) {
  // 64-channel tasks (fewer sums over channels per token) when there are enough of them for the threads
  const int64_t batch = u.size(0), d_inner = u.size(1), L = u.size(2), N = A.size(1);
  const int DC = batch * ((d_inner + 63) / 64) >= at::get_num_threads() ? 64 : 32;
  const int64_t blocks = (d_inner + DC - 1) / DC;
  const bool has_z = z.numel() > 0;
  auto f32 = u.options();
  auto du = at::empty({batch, L, d_inner}, f32), ddelta = at::empty({batch, L, d_inner}, f32);
  auto dz = has_z ? at::empty({batch, L, d_inner}, f32) : at::zeros({batch, L, d_inner}, f32);
  auto dA = at::zeros({d_inner, N}, f32), dD = at::zeros({d_inner}, f32), dbias = at::zeros({d_inner}, f32);
  auto dBp = at::empty({batch, blocks, L, N}, f32), dCp = at::empty({batch, blocks, L, N}, f32);  // per block
  const Mamba1Args g = mamba1_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus, nullptr, reverse);
  const View3 gv = view3(grad);
  if (DC == 64) {
    run_mamba1_backward<64>(g, gv, batch, du, ddelta, dz, dA, dD, dbias, dBp, dCp);
  } else {
    run_mamba1_backward<32>(g, gv, batch, du, ddelta, dz, dA, dD, dbias, dBp, dCp);
  }
  auto dB = at::empty({batch, L, N}, f32), dC = at::empty({batch, L, N}, f32);
  const int64_t rows = L * N, chunk = 4096;  // sum the blocks' parts, in block order
  at::parallel_for(0, batch * ((rows + chunk - 1) / chunk), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / ((rows + chunk - 1) / chunk), r0 = (i % ((rows + chunk - 1) / chunk)) * chunk;
      const int64_t r1 = std::min(rows, r0 + chunk);
      for (auto [parts, out] : {std::pair{&dBp, &dB}, std::pair{&dCp, &dC}}) {
        const float* src = parts->data_ptr<float>() + b * blocks * rows;
        float* dst = out->data_ptr<float>() + b * rows;
        std::copy(src + r0, src + r1, dst + r0);
        for (int64_t blk = 1; blk < blocks; ++blk)
#pragma omp simd
          for (int64_t r = r0; r < r1; ++r) dst[r] += src[blk * rows + r];
      }
    }
  });
  return {du, ddelta, dz, dA, dB, dC, dD, dbias};
}
}  // namespace dnallm
