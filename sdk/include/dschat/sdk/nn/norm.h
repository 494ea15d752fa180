#pragma once
// LayerNorm (OPT, BLOOM) and RMSNorm (LLaMA), with HF's parameter names (weight, bias) and numerics.
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "dschat/sdk/export.h"

namespace dschat {

class DSCHAT_SDK_API LayerNormImpl : public torch::nn::Module {
 public:
  LayerNormImpl(int64_t size, double eps = 1e-5, bool elementwise_affine = true);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight, bias;  // undefined without elementwise_affine
  double eps;
  int64_t size;
};
TORCH_MODULE(LayerNorm);

// HF LlamaRMSNorm: normalize in float32, cast back to the input dtype, then scale by weight.
class DSCHAT_SDK_API RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t size, double eps = 1e-6);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

}  // namespace dschat
