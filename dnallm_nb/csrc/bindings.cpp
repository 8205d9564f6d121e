// The Python module of the CPU kernels (its name, TORCH_EXTENSION_NAME, is set by the build: see fastscan.py).
#include <torch/python.h>  // pybind11 with torch's tensor conversions (lighter than torch/extension.h)

#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mamba1_scan", &dnallm::mamba1_scan, "Mamba-1 selective scan (mamba1.cpp)");
  m.def("mamba1_scan_backward", &dnallm::mamba1_scan_backward, "Gradients of mamba1_scan (mamba1.cpp)");
  m.def("ssd_decay_mask", &dnallm::ssd_decay_mask, "SSD intra-chunk decay mask (ssd.cpp)");
  m.def("ssd_chunk_states", &dnallm::ssd_chunk_states, "SSD state passing between chunks (ssd.cpp)");
  m.def("ssd_chunk_inputs", &dnallm::ssd_chunk_inputs, "SSD chunk inputs dt*x (ssd.cpp)");
  m.def("ssd_combine", &dnallm::ssd_combine, "SSD output of one window (ssd.cpp)");
  m.def("causal_conv1d", &dnallm::causal_conv1d, "Depthwise causal convolution and SiLU (conv.cpp)");
  m.def("causal_conv1d_backward", &dnallm::causal_conv1d_backward, "Gradients of causal_conv1d (conv.cpp)");
  m.def("add_rms_norm", &dnallm::add_rms_norm, "Residual add and RMSNorm in float32, bfloat16 out (norm.cpp)");
}
