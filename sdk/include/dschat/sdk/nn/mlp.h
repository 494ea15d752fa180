#pragma once
// Feed-forward blocks: two-layer with an activation (OPT ReLU, BLOOM GELU-tanh) and gated SwiGLU (LLaMA).
#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "dschat/sdk/export.h"
#include "dschat/sdk/nn/linear.h"

namespace dschat {

enum class Activation { relu, gelu, gelu_tanh, silu };
// Parses HF's activation names ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish", ...).
DSCHAT_SDK_API Activation activation_from_hf(const std::string& name);
DSCHAT_SDK_API at::Tensor activate(const at::Tensor& x, Activation activation);

struct MlpOptions {
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  Activation activation = Activation::relu;
  bool bias = true;
  std::string up_name = "fc1", down_name = "fc2";
};

// down(act(up(x)))
class DSCHAT_SDK_API MlpImpl : public torch::nn::Module {
 public:
  explicit MlpImpl(MlpOptions options);
  at::Tensor forward(const at::Tensor& x);
  LoraLinear up{nullptr}, down{nullptr};

 private:
  Activation activation_;
};
TORCH_MODULE(Mlp);

struct GatedMlpOptions {
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  Activation activation = Activation::silu;
  bool bias = false;
};

// down(act(gate(x)) * up(x)), named gate_proj / up_proj / down_proj as in LLaMA.
class DSCHAT_SDK_API GatedMlpImpl : public torch::nn::Module {
 public:
  explicit GatedMlpImpl(GatedMlpOptions options);
  at::Tensor forward(const at::Tensor& x);
  LoraLinear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};

 private:
  Activation activation_;
};
TORCH_MODULE(GatedMlp);

}  // namespace dschat
