// Small layers: norms, embeddings, feed-forward blocks, the value head.
#include <torch/nn/init.h>

#include "dschat/sdk/nn/decode_ops.h"
#include "dschat/sdk/nn/embedding.h"
#include "dschat/sdk/nn/init.h"
#include "dschat/sdk/nn/mlp.h"
#include "dschat/sdk/nn/norm.h"
#include "dschat/sdk/nn/value_head.h"

namespace dschat {

LayerNormImpl::LayerNormImpl(int64_t size, double eps, bool elementwise_affine) : eps(eps), size(size) {
  if (elementwise_affine) {
    weight = register_parameter("weight", at::ones({size}));
    bias = register_parameter("bias", at::zeros({size}));
  }
}

at::Tensor LayerNormImpl::forward(const at::Tensor& x) { return at::layer_norm(x, {size}, weight, bias, eps); }

RMSNormImpl::RMSNormImpl(int64_t size, double eps) : eps(eps) { weight = register_parameter("weight", at::ones({size})); }

at::Tensor RMSNormImpl::forward(const at::Tensor& x) {
  if (auto fused = rms_norm_decode(x, weight, eps); fused.defined()) return fused;  // a decode step: one pass
  auto x32 = x.to(at::kFloat);
  auto normed = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

TokenEmbeddingImpl::TokenEmbeddingImpl(int64_t num_embeddings, int64_t dim) {
  weight = register_parameter("weight", at::empty({num_embeddings, dim}));
  init_normal(weight, 0.0, 0.02);
}

at::Tensor TokenEmbeddingImpl::forward(const at::Tensor& ids) {
  TORCH_CHECK(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt, "token ids must be integers, got ",
              ids.scalar_type());
  if (ids.is_cpu() && ids.numel() > 0) {  // on a GPU the kernel's own bound check fires instead of a sync
    const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < weight.size(0), "token id ", lo < 0 ? lo : hi, " is outside the vocabulary [0, ",
                weight.size(0), ")");
  }
  return at::embedding(weight, ids);
}

LearnedPositionalEmbeddingImpl::LearnedPositionalEmbeddingImpl(int64_t max_positions, int64_t dim, int64_t offset)
    : offset(offset) {
  weight = register_parameter("weight", at::empty({max_positions + offset, dim}));
  init_normal(weight, 0.0, 0.02);
}

at::Tensor LearnedPositionalEmbeddingImpl::forward(const at::Tensor& position_ids) {
  if (position_ids.is_cpu() && position_ids.numel() > 0) {
    const int64_t hi = position_ids.max().item<int64_t>();
    TORCH_CHECK(hi + offset < weight.size(0), "position ", hi, " is beyond max_position_embeddings (",
                weight.size(0) - offset, ")");
  }
  return at::embedding(weight, position_ids + offset);
}

Activation activation_from_hf(const std::string& name) {
  if (name == "relu") return Activation::relu;
  if (name == "gelu") return Activation::gelu;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast" || name == "bloom_gelu")
    return Activation::gelu_tanh;
  if (name == "silu" || name == "swish") return Activation::silu;
  TORCH_CHECK(false, "unsupported activation '", name,
              "' (supported: relu, gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, silu, swish)");
}

at::Tensor activate(const at::Tensor& x, Activation activation) {
  switch (activation) {
    case Activation::relu: return at::relu(x);
    case Activation::gelu: return at::gelu(x);
    case Activation::gelu_tanh: return at::gelu(x, "tanh");
    case Activation::silu: return at::silu(x);
  }
  TORCH_CHECK(false, "unknown activation");
}

MlpImpl::MlpImpl(MlpOptions options) : activation_(options.activation) {
  up = register_module(options.up_name, LoraLinear(options.hidden_size, options.intermediate_size, options.bias));
  down = register_module(options.down_name, LoraLinear(options.intermediate_size, options.hidden_size, options.bias));
}

at::Tensor MlpImpl::forward(const at::Tensor& x) { return down->forward(activate(up->forward(x), activation_)); }

GatedMlpImpl::GatedMlpImpl(GatedMlpOptions options) : activation_(options.activation) {
  gate_proj = register_module("gate_proj", LoraLinear(options.hidden_size, options.intermediate_size, options.bias));
  up_proj = register_module("up_proj", LoraLinear(options.hidden_size, options.intermediate_size, options.bias));
  down_proj = register_module("down_proj", LoraLinear(options.intermediate_size, options.hidden_size, options.bias));
}

at::Tensor GatedMlpImpl::forward(const at::Tensor& x) {
  auto gate_up = forward_group(x, {gate_proj.get(), up_proj.get()});
  if (activation_ == Activation::silu) {  // a decode step: one pass instead of silu, mul and their allocations
    if (auto fused = silu_mul_decode(gate_up[0], gate_up[1]); fused.defined()) return down_proj->forward(fused);
  }
  return down_proj->forward(activate(gate_up[0], activation_) * gate_up[1]);
}

ValueHeadImpl::ValueHeadImpl(int64_t hidden_size) {
  weight = register_parameter("weight", at::empty({1, hidden_size}));
  init_normal(weight, 0.0, 0.02);
}

at::Tensor ValueHeadImpl::forward(const at::Tensor& hidden) { return at::linear(hidden, weight).squeeze(-1); }

}  // namespace dschat
