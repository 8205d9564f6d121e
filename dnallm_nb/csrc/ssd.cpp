// The elementwise steps of the chunked Mamba-2 (SSD) scan on CPU; its matrix products stay in PyTorch.
#include "common.h"
#include "kernels.h"

namespace dnallm {
namespace {
constexpr float kDecayCut = -60.f;  // SSD decays below exp(-60) ~ 1e-26 are set to exactly 0 (keeps GEMM inputs normal)

struct View4 {  // a float (batch, time, head, headdim) tensor, any strides
  const float* p;
  int64_t sb, st, sh, sp;
};
View4 view4(const at::Tensor& t) { return {t.data_ptr<float>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// tile[q * P + p] = v[b, t0 + q, h, p] for q < qn (zero for qn <= q < Q), reading along the contiguous axis.
inline void load_head_tile(const View4& v, int64_t b, int64_t t0, int64_t qn, int64_t Q, int64_t h, int64_t P,
                           float* __restrict tile) {
  const float* base = v.p + b * v.sb + t0 * v.st + h * v.sh;
  if (v.st == 1) {
    for (int64_t p = 0; p < P; ++p)
      for (int64_t q = 0; q < qn; ++q) tile[q * P + p] = base[q + p * v.sp];
  } else {
    for (int64_t q = 0; q < qn; ++q) {
      const float* row = base + q * v.st;
#pragma omp simd
      for (int64_t p = 0; p < P; ++p) tile[q * P + p] = row[p * v.sp];
    }
  }
  std::fill(tile + qn * P, tile + Q * P, 0.f);
}
}  // namespace

// SSD intra-chunk matrix: M[b,c,h,i,j] = CB[b,c,h / (H/G),i,j] * exp(acum[b,c,h,i] - acum[b,c,h,j]) for j <= i, else 0.
// CB: (batch, chunks, G, Q, Q) float32, acum: (batch, chunks, H, Q) float64 (differences of large cumulative sums
// lose precision in float32), both contiguous.
at::Tensor ssd_decay_mask(at::Tensor CB, at::Tensor acum) {
  const int64_t batch = acum.size(0), chunks = acum.size(1), H = acum.size(2), Q = acum.size(3), G = CB.size(2);
  auto M = at::empty({batch, chunks, H, Q, Q}, CB.options());
  const float* cb = CB.data_ptr<float>();
  const double* ac = acum.data_ptr<double>();
  float* m = M.data_ptr<float>();
  at::parallel_for(0, batch * chunks * H, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t bc = i / H, h = i % H;
      const double* a = ac + i * Q;
      const float* cbm = cb + (bc * G + h / (H / G)) * Q * Q;
      float* out = m + i * Q * Q;
      for (int64_t r = 0; r < Q; ++r) {
        const double ar = a[r];
#pragma omp simd
        for (int64_t k = 0; k < Q; ++k) {
          const float arg = (float)(ar - a[k]);  // <= 0: cumulative decay from step k to step r
          out[r * Q + k] = (k <= r && arg > kDecayCut) ? cbm[r * Q + k] * fexp(arg) : 0.f;
        }
      }
    }
  });
  return M;
}

// SSD inter-chunk pass: returns the state entering each chunk, Sin[:, c] = S; then S <- decay[:, c] S + Sc[:, c].
// Sc: (batch, chunks, H, E), decay: (batch, chunks, H), S: (batch, H, E) (updated in place); contiguous float32.
at::Tensor ssd_chunk_states(at::Tensor Sc, at::Tensor decay, at::Tensor S) {
  const int64_t batch = Sc.size(0), chunks = Sc.size(1), H = Sc.size(2), E = Sc.size(3);
  auto Sin = at::empty_like(Sc);
  const float* sc = Sc.data_ptr<float>();
  const float* dk = decay.data_ptr<float>();
  float* s = S.data_ptr<float>();
  float* sin = Sin.data_ptr<float>();
  at::parallel_for(0, batch * H, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / H, h = i % H;
      float* st = s + i * E;
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t row = (b * chunks + c) * H + h;
        const float d = dk[row];
        float* o = sin + row * E;
        const float* add = sc + row * E;
#pragma omp simd
        for (int64_t e = 0; e < E; ++e) { o[e] = st[e]; st[e] = d * st[e] + add[e]; }
      }
    }
  });
  return Sin;
}



// SSD inputs of one window of n tokens (chunks of Q, the last one zero-padded). x: (batch, n, H, P) any strides;
// dt: (batch, chunks, Q, H) float32 and cum: (batch, chunks, Q, H) float64, contiguous. Returns
// dx = x·dt as (batch, chunks, H, Q, P) and xd = x·dt·exp(cum_end - cum) as (batch, chunks, Q, H, P).
std::vector<at::Tensor> ssd_chunk_inputs(at::Tensor x, at::Tensor dt, at::Tensor cum) {
  const int64_t batch = dt.size(0), chunks = dt.size(1), Q = dt.size(2), H = dt.size(3), P = x.size(3), n = x.size(1);
  auto dx = at::empty({batch, chunks, H, Q, P}, dt.options());
  auto xd = at::empty({batch, chunks, Q, H, P}, dt.options());
  const View4 xv = view4(x);
  const float* dtp = dt.data_ptr<float>();
  const double* cp = cum.data_ptr<double>();
  float* dxp = dx.data_ptr<float>();
  float* xdp = xd.data_ptr<float>();
  at::parallel_for(0, batch * chunks * H, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    std::vector<float> tile(Q * P);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t bc = i / H, h = i % H, b = bc / chunks, c = bc % chunks;
      load_head_tile(xv, b, c * Q, std::min(Q, n - c * Q), Q, h, P, tile.data());
      const float* d = dtp + bc * Q * H;
      const double* cm = cp + bc * Q * H;
      for (int64_t q = 0; q < Q; ++q) {
        const float s = d[q * H + h];
        const float arg = (float)(cm[(Q - 1) * H + h] - cm[q * H + h]);
        const float e = arg > kDecayCut ? fexp(arg) : 0.f;
        float* o1 = dxp + ((bc * H + h) * Q + q) * P;
        float* o2 = xdp + ((bc * Q + q) * H + h) * P;
        const float* xq = tile.data() + q * P;
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) { o1[p] = xq[p] * s; o2[p] = xq[p] * s * e; }
      }
    }
  });
  return {dx, xd};
}

// SSD output of one window: out[b, c*Q + q, h, p] = Yin[b, c, h / hpg, q, (h % hpg)*P + p] * exp(cum[b, c, q, h])
//   + Y[b, c, h, q, p] + D[h] * x[b, c*Q + q, h, p], for the window's n tokens. out, x: (batch, n, H, P) any strides;
// Yin: (batch, chunks, G, Q, hpg*P), Y: (batch, chunks, H, Q, P), cum: (batch, chunks, Q, H) float64, contiguous;
// D: (H,) or empty.
void ssd_combine(at::Tensor out, at::Tensor Yin, at::Tensor Y, at::Tensor cum, at::Tensor x, at::Tensor D) {
  const int64_t batch = Y.size(0), chunks = Y.size(1), H = Y.size(2), Q = Y.size(3), P = Y.size(4), n = out.size(1);
  const int64_t G = Yin.size(2), hpg = H / G;
  const bool has_D = D.numel() > 0;
  const View4 xv = view4(x), ov = view4(out);
  float* op = out.data_ptr<float>();
  const float* yin = Yin.data_ptr<float>();
  const float* yp = Y.data_ptr<float>();
  const double* cp = cum.data_ptr<double>();
  const float* Dp = has_D ? D.data_ptr<float>() : nullptr;
  at::parallel_for(0, batch * chunks * H, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    std::vector<float> tile(Q * P, 0.f);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t bc = i / H, h = i % H, b = bc / chunks, c = bc % chunks, qn = std::min(Q, n - c * Q);
      const float Dh = has_D ? Dp[h * D.stride(0)] : 0.f;
      if (has_D) load_head_tile(xv, b, c * Q, qn, Q, h, P, tile.data());
      for (int64_t q = 0; q < qn; ++q) {
        const float arg = (float)cp[(bc * Q + q) * H + h];
        const float e = arg > kDecayCut ? fexp(arg) : 0.f;
        const float* a = yin + ((bc * G + h / hpg) * Q + q) * hpg * P + (h % hpg) * P;
        const float* r = yp + ((bc * H + h) * Q + q) * P;
        const float* xq = tile.data() + q * P;
        float* o = op + b * ov.sb + (c * Q + q) * ov.st + h * ov.sh;
        if (ov.sp == 1) {
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) o[p] = a[p] * e + r[p] + Dh * xq[p];
        } else {
          for (int64_t p = 0; p < P; ++p) o[p * ov.sp] = a[p] * e + r[p] + Dh * xq[p];
        }
      }
    }
  });
}

}  // namespace dnallm
