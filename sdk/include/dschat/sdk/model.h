#pragma once
// Kind "model": maps an HF config.json and its weight names to a causal LM built from SDK layers.
// The plugin's name is the HF `model_type` it handles ("opt", "bloom", "llama").
#include <memory>
#include <string>

#include <nlohmann/json_fwd.hpp>
#include <torch/nn/module.h>

namespace dschat {

// A causal LM exposed as embed -> blocks[i] -> final norm/head, so strategies can wrap each block.
class CausalLM : public torch::nn::Module {
 public:
  ~CausalLM() override = default;
};

class ModelFamily {
 public:
  static constexpr const char* kind = "model";
  static constexpr int interface_version = 1;
  virtual ~ModelFamily() = default;

  virtual std::shared_ptr<CausalLM> build(const nlohmann::json& hf_config) const = 0;
};

}  // namespace dschat
