#pragma once
// The reward / critic model's value head: a bias-free Linear hidden -> 1, one value per token.
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "dschat/sdk/export.h"

namespace dschat {

class DSCHAT_SDK_API ValueHeadImpl : public torch::nn::Module {
 public:
  explicit ValueHeadImpl(int64_t hidden_size);
  at::Tensor forward(const at::Tensor& hidden);  // [B, T, hidden] -> [B, T]
  at::Tensor weight;                             // [1, hidden], named like DeepSpeed-Chat's v_head.weight
};
TORCH_MODULE(ValueHead);

}  // namespace dschat
