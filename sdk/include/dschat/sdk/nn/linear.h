#pragma once
// A Linear layer (y = x W^T + b, HF's nn.Linear layout: weight [out, in]) that can carry a LoRA adapter:
//   y = x W^T + b + s * (x R) L,   R [in, r] kaiming-uniform, L [r, out] zeros, s = scale (1/r by default)
// as DeepSpeed-Chat's LinearLayer_LoRA does (lora_right_weight = R, lora_left_weight = L). fuse() folds the
// adapter into W for generation and export; unfuse() takes it back out exactly as it was added.
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "dschat/sdk/export.h"

namespace dschat {

struct LoraOptions {
  int64_t rank = 8;
  std::optional<double> scale;  // default 1 / rank
  double dropout = 0.0;
};

class DSCHAT_SDK_API LoraLinearImpl : public torch::nn::Module {
 public:
  LoraLinearImpl(int64_t in_features, int64_t out_features, bool bias = true);
  at::Tensor forward(const at::Tensor& x);

  // Adds lora_right_weight / lora_left_weight parameters. The base weight stays as it is (freezing it is the
  // optimizer's business).
  void enable_lora(const LoraOptions& options);
  bool has_lora() const { return lora_right.defined(); }
  bool fused() const { return fused_; }
  void fuse();    // W += s * (R L)^T; forward then skips the adapter
  void unfuse();  // W -= s * (R L)^T
  // W with the adapter folded in, without changing the layer (export uses it).
  at::Tensor merged_weight() const;
  double lora_scale() const { return scale_; }

  int64_t in_features = 0, out_features = 0;
  at::Tensor weight, bias;             // bias undefined when bias = false
  at::Tensor lora_right, lora_left;    // undefined until enable_lora

  // Tensor parallelism (tensor_parallel.h sets these on a shard; empty otherwise, and forward is unchanged).
  // reduce_partial: a row-parallel layer holds a slice of the input features, so x W^T is a partial sum; this
  //   sums it across the group, and the (replicated) bias is added once, after it.
  // gather_output: a vocab-parallel head holds a slice of the output features; this concatenates the ranks'.
  // enter_parallel: a column-parallel layer of a trainable shard reads the replicated input as it is; this is
  //   Megatron's "f" (identity forward, the input's gradient summed across the group in backward).
  std::function<at::Tensor(at::Tensor)> reduce_partial, gather_output, enter_parallel;

 private:
  at::Tensor forward_parallel(const at::Tensor& x);

  double scale_ = 0.0;
  double lora_dropout_ = 0.0;
  bool fused_ = false;
};
TORCH_MODULE(LoraLinear);

// The layers' forwards on one input (q, k and v; gate and up): one skinny_linear_group call where every layer
// would take the decode-step kernel as it is (no unfused adapter, no tensor-parallel hooks), each layer's
// forward otherwise. At decode this is one fork-join per group instead of one per layer.
DSCHAT_SDK_API std::vector<at::Tensor> forward_group(const at::Tensor& x,
                                                     std::initializer_list<LoraLinearImpl*> layers);

// Enables LoRA on every LoraLinear whose own name (the last component of its path, e.g. "q_proj") is in
// `targets`. Returns how many layers got an adapter; zero is an error (a typo in the target list).
DSCHAT_SDK_API size_t enable_lora(torch::nn::Module& model, const std::vector<std::string>& targets,
                                  const LoraOptions& options);
// Fuses / unfuses every adapter in the model.
DSCHAT_SDK_API void fuse_lora(torch::nn::Module& model);
DSCHAT_SDK_API void unfuse_lora(torch::nn::Module& model);

}  // namespace dschat
