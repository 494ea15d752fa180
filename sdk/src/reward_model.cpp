#include "dschat/sdk/reward_model.h"

#include <stdexcept>

#include <nlohmann/json.hpp>

#include "dschat/sdk/atomic_file.h"
#include "dschat/sdk/safetensors.h"
#include "dschat/sdk/tokenizer.h"

namespace dschat {

RewardModel::RewardModel(std::shared_ptr<CausalLM> base_model) : base(std::move(base_model)) {
  TORCH_CHECK(base, "RewardModel needs a base model");
  register_module("rwtransformer", base);
  v_head = register_module("v_head", ValueHead(base->dims().output_hidden_size));
  v_head->to(base->device(), base->dtype());
}

at::Tensor RewardModel::values_from_hidden(const at::Tensor& hidden) { return v_head->forward(hidden); }

at::Tensor RewardModel::values(const at::Tensor& input_ids, const at::Tensor& attention_mask) {
  auto out = base->forward(input_ids, attention_mask, nullptr, /*return_hidden=*/true, /*return_logits=*/false);
  return values_from_hidden(out.hidden);
}

void save_reward_model(RewardModel& model, const ModelFamily& family, const Tokenizer* tokenizer,
                       const std::filesystem::path& dir, const nlohmann::json& conventions) {
  family.export_hf(*model.base, dir);
  at::Tensor head = model.v_head->weight.detach().to(at::kCPU, model.base->dtype()).contiguous();
  safetensors::require_finite(dir / "value_head.safetensors", {{"v_head.weight", head}});
  safetensors::save_file(dir / "value_head.safetensors", {{"v_head.weight", head}}, {{"format", "pt"}});
  if (tokenizer != nullptr) tokenizer->save(dir);
  write_file_atomic(dir / "reward_model.json", conventions.dump(2) + "\n");
}

RewardConventions reward_conventions(const Tokenizer& tokenizer) {
  auto pad = tokenizer.eos_id() ? tokenizer.eos_id() : tokenizer.pad_id();
  if (!pad) throw std::invalid_argument("the tokenizer has neither a pad nor an eos token");
  RewardConventions c;
  c.pad_token_id = *pad;
  auto probe = tokenizer.encode("a", /*add_special_tokens=*/true);
  c.num_padding_at_beginning = !probe.empty() && probe.front() == c.pad_token_id ? 1 : 0;
  return c;
}

nlohmann::json reward_conventions_json(const RewardConventions& c) {
  return {{"pad_token_id", c.pad_token_id}, {"num_padding_at_beginning", c.num_padding_at_beginning},
          {"value_head", "v_head.weight"}};
}

void load_value_head(RewardModel& model, const std::filesystem::path& dir) {
  auto file = safetensors::File::open(dir / "value_head.safetensors");
  at::Tensor w = file->tensor("v_head.weight");
  TORCH_CHECK(w.sizes() == model.v_head->weight.sizes(), (dir / "value_head.safetensors").string(),
              ": v_head.weight has shape ", w.sizes(), ", the model needs ", model.v_head->weight.sizes());
  at::NoGradGuard no_grad;
  model.v_head->weight.copy_(w);
}

}  // namespace dschat
