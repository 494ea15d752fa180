#include "dschat/sdk/rlhf/rewards.h"

#include <ATen/ops/zeros.h>
#include <c10/core/GradMode.h>

#include <iostream>
#include <stdexcept>

#include <fmt/format.h>

#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/reward_loss.h"
#include "dschat/sdk/reward_model.h"
#include "dschat/sdk/rlhf/rollout.h"
#include "dschat/sdk/strategy.h"
#include "dschat/sdk/tokenizer.h"

namespace dschat::rlhf {

at::Tensor reward_model_scores(RewardModel& reward, const at::Tensor& seq, int64_t pad_id, int64_t prompt_length) {
  return end_scores(reward.values(seq, experience_mask(seq, pad_id)), seq, pad_id, prompt_length);
}

namespace {

class RewardModelScore : public RewardFunction {
 public:
  RewardModelScore(std::shared_ptr<RewardModel> model, FrozenPlacement placement)
      : model_(std::move(model)), placement_(placement) {}
  void prepare(StageContext& context, at::Device device) override {
    const std::string how = context.strategy().place_frozen_model(*model_->base, device, placement_);
    model_->v_head->to(device);
    std::cout << fmt::format("stage {}: reward model: {}\n", context.stage_name(), how);
  }
  at::Tensor score(const RewardBatch& batch) override {
    at::NoGradGuard no_grad;
    return reward_model_scores(*model_, batch.sequences, batch.pad_id, batch.prompt_length).to(at::kFloat);
  }

 private:
  std::shared_ptr<RewardModel> model_;
  FrozenPlacement placement_;
};

}  // namespace

WeightedReward reward_model_reward(std::shared_ptr<RewardModel> model, double weight, FrozenPlacement placement) {
  return {"reward-model", weight, std::make_shared<RewardModelScore>(std::move(model), placement)};
}

std::vector<WeightedReward> stage_rewards(StageContext& context, const std::string& reward_role,
                                          std::optional<at::ScalarType> reward_dtype, FrozenPlacement placement) {
  std::vector<WeightedReward> rewards = context.rewards();
  if (!rewards.empty()) return rewards;
  if (reward_role.empty())
    throw std::invalid_argument(fmt::format("stage {}: nothing scores the answers: list rewards = [...] or name a "
                                            "reward model (reward = \"<model>\")",
                                            context.stage_name()));
  auto model = std::make_shared<RewardModel>(context.load_model(reward_role));
  load_value_head(*model, context.model_dir(reward_role));
  if (reward_dtype) model->to(*reward_dtype);  // the value head too: it reads the base's final hidden states
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  model->eval();
  return {reward_model_reward(std::move(model), 1.0, placement)};
}

std::vector<const TextExample*> rollout_examples(const std::vector<TextExample>& examples,
                                                 const std::vector<TokenizedExample>& set,
                                                 const std::vector<int64_t>& indices, int64_t copies,
                                                 const at::Tensor& kept) {
  std::vector<const TextExample*> rows;
  for (auto i : indices) {
    const int64_t e = set.at(static_cast<size_t>(i)).example;
    const TextExample* row = e >= 0 && e < static_cast<int64_t>(examples.size()) ? &examples[e] : nullptr;
    for (int64_t c = 0; c < copies; ++c) rows.push_back(row);
  }
  if (!kept.defined()) return rows;
  auto index = kept.to(at::kCPU).to(at::kLong).contiguous();
  std::vector<const TextExample*> out;
  for (int64_t k = 0; k < index.numel(); ++k) out.push_back(rows.at(static_cast<size_t>(index.data_ptr<int64_t>()[k])));
  return out;
}

RewardSum::RewardSum(std::vector<WeightedReward> rewards, std::shared_ptr<const Tokenizer> tokenizer)
    : rewards_(std::move(rewards)), tokenizer_(std::move(tokenizer)) {
  TORCH_CHECK(!rewards_.empty(), "RewardSum needs at least one reward");
  for (const auto& r : rewards_) {
    TORCH_CHECK(r.function, "reward '", r.name, "' has no function");
    if (!dynamic_cast<const RewardModelScore*>(r.function.get())) decode_ = true;
  }
  TORCH_CHECK(!decode_ || tokenizer_, "rule rewards read the answers' text: RewardSum needs a tokenizer");
}

void RewardSum::prepare(StageContext& context, at::Device device) {
  for (auto& r : rewards_) r.function->prepare(context, device);
}

RewardScores RewardSum::score(const at::Tensor& sequences, const at::Tensor& answer_mask, int64_t prompt_length,
                              int64_t pad_id, const std::vector<const TextExample*>& examples) {
  const int64_t B = sequences.size(0);
  TORCH_CHECK(examples.empty() || static_cast<int64_t>(examples.size()) == B, "RewardSum::score: ", examples.size(),
              " data rows for ", B, " sequences");
  RewardBatch batch;
  batch.sequences = sequences;
  batch.prompt_length = prompt_length;
  batch.pad_id = pad_id;
  auto answers = sequences.slice(1, prompt_length);
  TORCH_CHECK(answer_mask.sizes() == answers.sizes(), "RewardSum::score: answer_mask ", answer_mask.sizes(),
              " does not match the answers ", answers.sizes());
  batch.answer_mask = answer_mask;
  batch.examples = examples;
  if (decode_) {
    auto ids = answers.to(at::kCPU).contiguous();
    auto lengths = answer_mask.sum(1).to(at::kCPU);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t* row = ids[b].data_ptr<int64_t>();
      batch.answers.push_back(
          tokenizer_->decode(std::vector<int64_t>(row, row + lengths[b].item<int64_t>()), /*skip_special_tokens=*/true));
    }
  }
  RewardScores out;
  for (const auto& r : rewards_) {
    at::Tensor s = r.function->score(batch);
    TORCH_CHECK(s.dim() == 1 && s.size(0) == B, "reward '", r.name, "' returned scores of shape ", s.sizes(),
                " for ", B, " rows; expected [", B, "]");
    s = s.to(sequences.device(), at::kFloat);
    out.total = out.total.defined() ? out.total + s * r.weight : (r.weight == 1.0 ? s : s * r.weight);
    out.parts.emplace_back(r.name, s);
  }
  return out;
}

}  // namespace dschat::rlhf
