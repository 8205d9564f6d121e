// The depthwise causal convolution (and SiLU) in front of both scans, in the (batch, L, channels) layout.
#include "common.h"
#include "kernels.h"

namespace dnallm {
namespace {
// The convolution for input elements In and output elements Out (float, or uint16_t holding bfloat16): taps, bias and
// sums in float32; a bfloat16 row is summed in a float32 buffer and rounded once when stored.
template <typename In, typename Out>
void causal_conv1d_impl(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, bool silu, bool reverse,
                        at::Tensor& y) {
  const int64_t batch = x.size(0), L = x.size(1), Cn = x.size(2), K = w.size(1);
  const In* xp = reinterpret_cast<const In*>(x.data_ptr());
  const int64_t sb = x.stride(0), st = x.stride(1), sc = x.stride(2);
  std::vector<float> wt(K * Cn), bv(Cn, 0.f);  // taps transposed to (K, C): vector loads along channels
  const float* wp = w.data_ptr<float>();
  for (int64_t c = 0; c < Cn; ++c) {
    for (int64_t k = 0; k < K; ++k) wt[k * Cn + c] = wp[c * w.stride(0) + k * w.stride(1)];
    if (bias.numel()) bv[c] = bias.data_ptr<float>()[c * bias.stride(0)];
  }
  constexpr int64_t TB = 256;  // time steps per task
  constexpr bool kFloatOut = std::is_same<Out, float>::value;
  const int64_t blocks = (L + TB - 1) / TB;
  Out* yp = reinterpret_cast<Out*>(y.data_ptr());
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    std::vector<float> row(Cn);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / blocks, t0 = (i % blocks) * TB, t1 = std::min(L, t0 + TB);
      for (int64_t t = t0; t < t1; ++t) {
        Out* dst = yp + (b * L + t) * Cn;
        float* out = kFloatOut ? reinterpret_cast<float*>(dst) : row.data();
        std::copy(bv.begin(), bv.end(), out);
        for (int64_t k = 0; k < K; ++k) {
          const int64_t s = reverse ? t + K - 1 - k : t - K + 1 + k;
          if (s < 0 || s >= L) continue;
          const In* in = xp + b * sb + s * st;
          const float* wk = wt.data() + k * Cn;
          if (sc == 1) {
#pragma omp simd
            for (int64_t c = 0; c < Cn; ++c) out[c] += wk[c] * to_float(in[c]);
          } else {
            for (int64_t c = 0; c < Cn; ++c) out[c] += wk[c] * to_float(in[c * sc]);
          }
        }
        if (silu) {
#pragma omp simd
          for (int64_t c = 0; c < Cn; ++c) out[c] = fsilu(out[c]);
        }
        if (!kFloatOut) {
#pragma omp simd
          for (int64_t c = 0; c < Cn; ++c) store_float(dst + c, out[c]);
        }
      }
    }
  });
}
}  // namespace

// Causal depthwise convolution along time, optionally followed by SiLU: y[b, t, c] = act(bias[c] +
// sum_k w[c, k] * x[b, t - K + 1 + k, c]) with x = 0 before the start. x: (batch, L, C) any strides, float32 or
// bfloat16; w: (C, K) and bias: (C,) or empty, float32. Returns y as (batch, L, C) contiguous in x's dtype.
// reverse: anti-causal, x[b, t + K - 1 - k, c] with x = 0 after the end (the convolution of the time-reversed input,
// reversed).
at::Tensor causal_conv1d(at::Tensor x, at::Tensor w, at::Tensor bias, bool silu, bool reverse) {
  auto y = at::empty({x.size(0), x.size(1), x.size(2)}, x.options());
  if (is_bf16(x, "causal_conv1d's x")) {
    causal_conv1d_impl<uint16_t, uint16_t>(x, w, bias, silu, reverse, y);
  } else {
    causal_conv1d_impl<float, float>(x, w, bias, silu, reverse, y);
  }
  return y;
}
}  // namespace dnallm

namespace dnallm {
// Gradients of causal_conv1d (same x, w, bias, silu, reverse; grad: (batch, L, C) any strides). Returns dx as
// (batch, L, C) contiguous, dw (C, K) and dbias (C,). Tasks are (sequence, block of time steps): each recomputes the
// pre-activation gradient ga = grad · silu'(a) on its block and the K - 1 steps that its dx reads beyond it, so that
// no (batch, L, C) intermediate is stored; dw and dbias sum per thread, then over threads in a fixed order.
std::vector<at::Tensor> causal_conv1d_backward(at::Tensor x, at::Tensor w, at::Tensor bias, bool silu, bool reverse,
                                               at::Tensor grad) {
  const int64_t batch = x.size(0), L = x.size(1), Cn = x.size(2), K = w.size(1);
  auto dx = at::empty({batch, L, Cn}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* gp = grad.data_ptr<float>();
  const int64_t sb = x.stride(0), st = x.stride(1), sc = x.stride(2);
  const int64_t gb = grad.stride(0), gt = grad.stride(1), gc = grad.stride(2);
  std::vector<float> wt(K * Cn), bv(Cn, 0.f);  // taps as (K, C), as in the forward kernel
  const float* wp = w.data_ptr<float>();
  for (int64_t c = 0; c < Cn; ++c) {
    for (int64_t k = 0; k < K; ++k) wt[k * Cn + c] = wp[c * w.stride(0) + k * w.stride(1)];
    if (bias.numel()) bv[c] = bias.data_ptr<float>()[c * bias.stride(0)];
  }
  constexpr int64_t TB = 256;
  const int64_t blocks = (L + TB - 1) / TB, threads = at::get_num_threads();
  std::vector<float> dwp(threads * K * Cn, 0.f), dbp(threads * Cn, 0.f);  // per-thread sums
  float* dxp = dx.data_ptr<float>();
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    const int64_t tid = std::min<int64_t>(at::get_thread_num(), threads - 1);
    float* dwl = dwp.data() + tid * K * Cn;
    float* dbl = dbp.data() + tid * Cn;
    std::vector<float> ga((TB + K - 1) * Cn), pre(Cn), xin(Cn);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / blocks, t0 = (i % blocks) * TB, t1 = std::min(L, t0 + TB);
      // ga rows cover [g0, g1): dx at s reads ga at s + K - 1 - k (causal) or s - K + 1 + k (reverse)
      const int64_t g0 = reverse ? std::max<int64_t>(0, t0 - K + 1) : t0;
      const int64_t g1 = reverse ? t1 : std::min(L, t1 + K - 1);
      for (int64_t t = g0; t < g1; ++t) {
        float* out = ga.data() + (t - g0) * Cn;
        const float* g = gp + b * gb + t * gt;
        if (gc == 1) {
#pragma omp simd
          for (int64_t c = 0; c < Cn; ++c) out[c] = g[c];
        } else {
          for (int64_t c = 0; c < Cn; ++c) out[c] = g[c * gc];
        }
        const bool own = t >= t0 && t < t1;  // this task's dw and dbias terms
        if (silu) {
          std::copy(bv.begin(), bv.end(), pre.begin());
          for (int64_t k = 0; k < K; ++k) {
            const int64_t s = reverse ? t + K - 1 - k : t - K + 1 + k;
            if (s < 0 || s >= L) continue;
            const float* in = xp + b * sb + s * st;
            const float* wk = wt.data() + k * Cn;
            if (sc == 1) {
#pragma omp simd
              for (int64_t c = 0; c < Cn; ++c) pre[c] += wk[c] * in[c];
            } else {
              for (int64_t c = 0; c < Cn; ++c) pre[c] += wk[c] * in[c * sc];
            }
          }
#pragma omp simd
          for (int64_t c = 0; c < Cn; ++c) {
            const float sg = 1.f / (1.f + fexp(-pre[c]));
            out[c] *= sg * (1.f + pre[c] * (1.f - sg));
          }
        }
        if (!own) continue;
#pragma omp simd
        for (int64_t c = 0; c < Cn; ++c) dbl[c] += out[c];
        for (int64_t k = 0; k < K; ++k) {
          const int64_t s = reverse ? t + K - 1 - k : t - K + 1 + k;
          if (s < 0 || s >= L) continue;
          const float* in = xp + b * sb + s * st;
          float* dwk = dwl + k * Cn;
          if (sc == 1) {
#pragma omp simd
            for (int64_t c = 0; c < Cn; ++c) dwk[c] += out[c] * in[c];
          } else {
            for (int64_t c = 0; c < Cn; ++c) dwk[c] += out[c] * in[c * sc];
          }
        }
      }
      for (int64_t s = t0; s < t1; ++s) {  // dx[s] = sum_k w[k] ga[t(s, k)]
        float* out = dxp + (b * L + s) * Cn;
        std::fill(out, out + Cn, 0.f);
        for (int64_t k = 0; k < K; ++k) {
          const int64_t t = reverse ? s - K + 1 + k : s + K - 1 - k;
          if (t < g0 || t >= g1) continue;
          const float* gr = ga.data() + (t - g0) * Cn;
          const float* wk = wt.data() + k * Cn;
#pragma omp simd
          for (int64_t c = 0; c < Cn; ++c) out[c] += wk[c] * gr[c];
        }
      }
    }
  });
  auto dw = at::zeros({Cn, K}, x.options()), db = at::zeros({Cn}, x.options());
  float* dwo = dw.data_ptr<float>();
  float* dbo = db.data_ptr<float>();
  for (int64_t r = 0; r < threads; ++r) {  // a fixed order: the sums do not depend on scheduling
    for (int64_t c = 0; c < Cn; ++c) {
      dbo[c] += dbp[r * Cn + c];
      for (int64_t k = 0; k < K; ++k) dwo[c * K + k] += dwp[(r * K + k) * Cn + c];
    }
  }
  return {dx, dw, db};
}
}  // namespace dnallm
