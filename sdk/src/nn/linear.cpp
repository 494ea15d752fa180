#include "dschat/sdk/nn/linear.h"

#include <cmath>

#include <torch/nn/init.h>

#include "dschat/sdk/nn/init.h"
#include "dschat/sdk/nn/skinny_linear.h"

namespace dschat {

LoraLinearImpl::LoraLinearImpl(int64_t in_features, int64_t out_features, bool with_bias)
    : in_features(in_features), out_features(out_features) {
  TORCH_CHECK(in_features > 0 && out_features > 0, "Linear needs positive sizes, got ", in_features, " -> ",
              out_features);
  weight = register_parameter("weight", at::empty({out_features, in_features}));
  init_normal(weight, 0.0, 0.02);  // HF's initializer_range default; checkpoints overwrite it
  if (with_bias) bias = register_parameter("bias", at::zeros({out_features}));
}

at::Tensor LoraLinearImpl::forward(const at::Tensor& x) {
  if (reduce_partial || gather_output || enter_parallel) return forward_parallel(x);
  // fast_linear: the decode-step kernel for a few rows without autograd, at::linear otherwise.
  auto y = fast_linear(x, weight, bias);
  if (has_lora() && !fused_) {
    auto input = (is_training() && lora_dropout_ > 0) ? at::dropout(x, lora_dropout_, true) : x;
    y = y + at::matmul(at::matmul(input, lora_right), lora_left) * scale_;
  }
  return y;
}

std::vector<at::Tensor> forward_group(const at::Tensor& x, std::initializer_list<LoraLinearImpl*> layers) {
  std::vector<at::Tensor> weights, biases;
  for (const auto* layer : layers) {
    if (layer->reduce_partial || layer->gather_output || layer->enter_parallel || (layer->has_lora() && !layer->fused()) ||
        !use_skinny_linear(x, layer->weight, layer->bias))
      break;
    weights.push_back(layer->weight);
    biases.push_back(layer->bias);
  }
  if (weights.size() == layers.size()) return skinny_linear_group(x, weights, biases);
  std::vector<at::Tensor> outputs;
  for (auto* layer : layers) outputs.push_back(layer->forward(x));
  return outputs;
}

at::Tensor LoraLinearImpl::forward_parallel(const at::Tensor& input) {
  // Shards carry no adapter (the actor's LoRA is folded into the sliced weights).
  TORCH_CHECK(!has_lora() || fused_, "a tensor-parallel linear layer cannot run an unfused LoRA adapter");
  const at::Tensor x = enter_parallel ? enter_parallel(input) : input;
  at::Tensor y;
  if (reduce_partial) {
    y = reduce_partial(fast_linear(x, weight));
    if (bias.defined()) y = y + bias;
  } else {
    y = fast_linear(x, weight, bias);
  }
  return gather_output ? gather_output(y) : y;
}

void LoraLinearImpl::enable_lora(const LoraOptions& options) {
  TORCH_CHECK(!has_lora(), "LoRA is already enabled on this layer");
  TORCH_CHECK(options.rank > 0, "LoRA rank must be positive, got ", options.rank);
  scale_ = options.scale.value_or(1.0 / static_cast<double>(options.rank));
  lora_dropout_ = options.dropout;
  auto tensor_options = weight.options();
  // R [in, r] kaiming-uniform with a = sqrt(5), L [r, out] zeros, as DeepSpeed-Chat: the adapter starts at 0.
  auto right = at::empty({in_features, options.rank}, tensor_options);
  torch::nn::init::kaiming_uniform_(right, std::sqrt(5.0));
  lora_right = register_parameter("lora_right_weight", right);
  lora_left = register_parameter("lora_left_weight", at::zeros({options.rank, out_features}, tensor_options));
}

at::Tensor LoraLinearImpl::merged_weight() const {
  if (!has_lora() || fused_) return weight;
  at::NoGradGuard no_grad;
  auto delta = at::matmul(lora_right.to(at::kFloat), lora_left.to(at::kFloat)).t() * scale_;
  return (weight.to(at::kFloat) + delta).to(weight.scalar_type());
}

void LoraLinearImpl::fuse() {
  TORCH_CHECK(has_lora(), "fuse(): this layer has no LoRA adapter");
  if (fused_) return;
  at::NoGradGuard no_grad;
  weight.add_((at::matmul(lora_right, lora_left).t() * scale_).to(weight.scalar_type()));
  fused_ = true;
}

void LoraLinearImpl::unfuse() {
  TORCH_CHECK(has_lora(), "unfuse(): this layer has no LoRA adapter");
  if (!fused_) return;
  at::NoGradGuard no_grad;
  weight.sub_((at::matmul(lora_right, lora_left).t() * scale_).to(weight.scalar_type()));
  fused_ = false;
}

namespace {
std::string last_component(const std::string& path) {
  auto dot = path.rfind('.');
  return dot == std::string::npos ? path : path.substr(dot + 1);
}
}  // namespace

size_t enable_lora(torch::nn::Module& model, const std::vector<std::string>& targets, const LoraOptions& options) {
  size_t count = 0;
  for (auto& item : model.named_modules()) {
    auto* linear = dynamic_cast<LoraLinearImpl*>(item.value().get());
    if (linear == nullptr) continue;
    auto name = last_component(item.key());
    if (std::find(targets.begin(), targets.end(), name) == targets.end()) continue;
    linear->enable_lora(options);
    ++count;
  }
  if (count == 0) {
    std::string list;
    for (const auto& t : targets) list += (list.empty() ? "" : ", ") + t;
    TORCH_CHECK(false, "LoRA: no linear layer is named any of [", list, "]");
  }
  return count;
}

void fuse_lora(torch::nn::Module& model) {
  for (auto& module : model.modules()) {
    if (auto* linear = dynamic_cast<LoraLinearImpl*>(module.get()); linear && linear->has_lora()) linear->fuse();
  }
}

void unfuse_lora(torch::nn::Module& model) {
  for (auto& module : model.modules()) {
    if (auto* linear = dynamic_cast<LoraLinearImpl*>(module.get()); linear && linear->has_lora()) linear->unfuse();
  }
}

}  // namespace dschat
