// The residual add and RMSNorm in front of every mixer, fused for bfloat16 models: one pass per row, in float32.
#include <cmath>

#include "common.h"
#include "kernels.h"

namespace dnallm {
namespace {
// One row: stream = x (+ residual), in float32; normed = stream * rstd * w, rstd = 1 / sqrt(mean(stream²) + eps).
template <typename In, typename Out>
void add_rms_norm_impl(const In* x, const float* residual, const float* w, float eps, int64_t rows, int64_t d,
                       float* stream, Out* normed) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const In* xr = x + r * d;
      float* s = stream + r * d;
      float sq = 0.f;
      if (residual) {
        const float* res = residual + r * d;
#pragma omp simd reduction(+ : sq)
        for (int64_t c = 0; c < d; ++c) {
          const float v = to_float(xr[c]) + res[c];
          s[c] = v;
          sq += v * v;
        }
      } else {
#pragma omp simd reduction(+ : sq)
        for (int64_t c = 0; c < d; ++c) {
          const float v = to_float(xr[c]);
          s[c] = v;
          sq += v * v;
        }
      }
      const float rstd = 1.f / std::sqrt(sq / (float)d + eps);
      Out* out = normed + r * d;
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) store_float(out + c, s[c] * rstd * w[c]);
    }
  });
}
}  // namespace

// x: (rows, d) contiguous, float32 or bfloat16; residual: (rows, d) contiguous float32, or empty (none); w: (d,)
// float32. Returns {normed in x's dtype, stream = x + residual in float32} (the new residual).
std::vector<at::Tensor> add_rms_norm(at::Tensor x, at::Tensor residual, at::Tensor w, double eps) {
  const int64_t d = x.size(-1), rows = x.numel() / d;
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous() && w.numel() == d, "add_rms_norm: contiguous x (rows, d), w (d,)");
  TORCH_CHECK(residual.numel() == 0 || (residual.is_contiguous() && residual.numel() == x.numel() &&
                                        residual.scalar_type() == at::kFloat), "add_rms_norm: residual as x, float32");
  auto stream = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  auto normed = at::empty(x.sizes(), x.options());
  const float* res = residual.numel() ? residual.data_ptr<float>() : nullptr;
  if (is_bf16(x, "add_rms_norm's x")) {
    add_rms_norm_impl(reinterpret_cast<const uint16_t*>(x.data_ptr()), res, w.data_ptr<float>(), (float)eps, rows, d,
                      stream.data_ptr<float>(), reinterpret_cast<uint16_t*>(normed.data_ptr()));
  } else {
    add_rms_norm_impl(x.data_ptr<float>(), res, w.data_ptr<float>(), (float)eps, rows, d, stream.data_ptr<float>(),
                      normed.data_ptr<float>());
  }
  return {normed, stream};
}
}  // namespace dnallm
