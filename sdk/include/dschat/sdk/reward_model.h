#pragma once
// DeepSpeed-Chat's RewardModel: the base transformer without its LM head (CausalLM::final_hidden) and a bias-free
// value head hidden -> 1, one value per token. Used by the reward stage and, as critic and reward, by PPO.
//
// On disk (the reward stage's final/ folder): the base model as an HF folder (config.json, model.safetensors,
// tokenizer) that transformers' AutoModel loads, plus value_head.safetensors holding "v_head.weight" [1, hidden]
// (the name DeepSpeed-Chat's reward-model state dict uses) and reward_model.json with the scoring conventions
// (pad id, num_padding_at_beginning). The head sits in its own file so that the folder stays a valid HF
// checkpoint of the base model.
#include <filesystem>
#include <memory>

#include <ATen/core/Tensor.h>
#include <nlohmann/json_fwd.hpp>
#include <torch/nn/module.h>

#include "dschat/sdk/export.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/nn/value_head.h"

namespace dschat {

class Tokenizer;

class DSCHAT_SDK_API RewardModel : public torch::nn::Module {
 public:
  // Registers `base` as "rwtransformer" and a new ValueHead(base->dims().output_hidden_size) as "v_head", in the
  // base model's dtype and device.
  explicit RewardModel(std::shared_ptr<CausalLM> base);
  // Values [B, T] from final hidden states [B, T, H].
  at::Tensor values_from_hidden(const at::Tensor& hidden);
  // Plain forward (no strategy): [B, T] values.
  at::Tensor values(const at::Tensor& input_ids, const at::Tensor& attention_mask);

  std::shared_ptr<CausalLM> base;
  ValueHead v_head{nullptr};
};

// Writes `dir` as described above: family.export_hf(base), value_head.safetensors, tokenizer, reward_model.json
// (`conventions`, e.g. {"pad_token_id": 1, "num_padding_at_beginning": 1}).
DSCHAT_SDK_API void save_reward_model(RewardModel& model, const ModelFamily& family, const Tokenizer* tokenizer,
                                      const std::filesystem::path& dir, const nlohmann::json& conventions);
// DeepSpeed-Chat's scoring conventions as a tokenizer implies them: pad = eos (every family but LLaMA, which has
// no eos-as-pad and uses its pad), and one padding at the beginning when the tokenizer starts every sequence with
// that token (OPT's </s>). Throws std::invalid_argument when the tokenizer has neither token.
struct RewardConventions {
  int64_t pad_token_id = 0;
  int64_t num_padding_at_beginning = 0;
};
DSCHAT_SDK_API RewardConventions reward_conventions(const Tokenizer& tokenizer);
// reward_model.json's content for them.
DSCHAT_SDK_API nlohmann::json reward_conventions_json(const RewardConventions& conventions);

// Loads value_head.safetensors from `dir` into model.v_head (shape checked, converted to its dtype).
DSCHAT_SDK_API void load_value_head(RewardModel& model, const std::filesystem::path& dir);

}  // namespace dschat
