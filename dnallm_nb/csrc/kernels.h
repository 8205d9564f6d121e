// The kernels that dnallm_nb.fastscan calls, one per Python function of the compiled module (bindings.cpp).
// Each definition's comment gives its tensor layouts; every tensor is float32 unless it says otherwise.
#pragma once
#include <ATen/core/Tensor.h>
#include <vector>

namespace dnallm {
// mamba1.cpp
at::Tensor mamba1_scan(at::Tensor u, at::Tensor delta, at::Tensor A, at::Tensor B, at::Tensor C, at::Tensor D,
                       at::Tensor z, at::Tensor delta_bias, bool delta_softplus, bool reverse);
std::vector<at::Tensor> mamba1_scan_backward(at::Tensor u, at::Tensor delta, at::Tensor A, at::Tensor B, at::Tensor C,
                                             at::Tensor D, at::Tensor z, at::Tensor delta_bias, bool delta_softplus,
                                             at::Tensor grad, bool reverse);
// ssd.cpp
at::Tensor ssd_decay_mask(at::Tensor CB, at::Tensor acum);
at::Tensor ssd_chunk_states(at::Tensor Sc, at::Tensor decay, at::Tensor S);
std::vector<at::Tensor> ssd_chunk_inputs(at::Tensor x, at::Tensor dt, at::Tensor cum);
void ssd_combine(at::Tensor out, at::Tensor Yin, at::Tensor Y, at::Tensor cum, at::Tensor x, at::Tensor D);
// conv.cpp
at::Tensor causal_conv1d(at::Tensor x, at::Tensor w, at::Tensor bias, bool silu, bool reverse);
std::vector<at::Tensor> causal_conv1d_backward(at::Tensor x, at::Tensor w, at::Tensor bias, bool silu, bool reverse,
                                               at::Tensor grad);
// norm.cpp
std::vector<at::Tensor> add_rms_norm(at::Tensor x, at::Tensor residual, at::Tensor w, double eps);
}  // namespace dnallm
