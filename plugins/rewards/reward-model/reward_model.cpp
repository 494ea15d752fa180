// `reward-model`: the score of a trained reward model, DeepSpeed-Chat's step-3 reward. The model is a reward
// stage's output (its final/ folder: the base model plus value_head.safetensors) or a [models.*] entry laid out
// the same way; each row scores the value head at the answer's last token before its first pad (end_scores),
// exactly as ppo scores its rollouts.
//
// Options: model (required: a [models.*] entry or an earlier stage), read through the stage role
// "reward_model" (not "reward", which is ppo's own role). The model is loaded once in prepare(), frozen (no
// gradients, eval mode) and placed on the stage's device.
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>

#include <ATen/core/grad_mode.h>

#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/reward.h"
#include "dschat/sdk/reward_loss.h"
#include "dschat/sdk/strategy.h"
#include "dschat/sdk/reward_model.h"

namespace {

using namespace dschat;

constexpr const char* kRole = "reward_model";

class RewardModelScore : public RewardFunction {
 public:
  explicit RewardModelScore(const ConfigTable& table) : model_(table.get_string("model")) {
    if (model_.empty()) table.fail("model", "must name a [models.*] entry or an earlier stage");
  }

  std::map<std::string, std::string> model_roles() const override { return {{kRole, model_}}; }

  void prepare(StageContext& context, at::Device device) override {
    auto rm = std::make_shared<RewardModel>(context.load_model(kRole));
    load_value_head(*rm, context.model_dir(kRole));
    for (auto& p : rm->parameters()) p.set_requires_grad(false);
    rm->eval();
    const std::string how = context.strategy().place_frozen_model(*rm->base, device, {});
    rm->v_head->to(device);
    std::cout << "stage " << context.stage_name() << ": reward model '" << model_ << "': " << how << "\n";
    rm_ = std::move(rm);
  }

  at::Tensor score(const RewardBatch& batch) override {
    if (!rm_) throw std::logic_error("reward-model: score() before prepare()");
    at::NoGradGuard no_grad;
    const auto& seq = batch.sequences;
    const auto values = rm_->values(seq, seq.ne(batch.pad_id).to(at::kLong));
    return end_scores(values, seq, batch.pad_id, batch.prompt_length).to(at::kFloat);
  }

 private:
  std::string model_;
  std::shared_ptr<RewardModel> rm_;
};

}  // namespace

DSCHAT_PLUGIN("reward-model", "0.1.0", "the score of a trained reward model (value head at the answer's end)") {
  registrar.add<dschat::RewardFunction>(
      "reward-model", "a reward stage's model scores each answer, as ppo does",
      [](const dschat::ConfigTable& options) { return std::make_shared<RewardModelScore>(options); });
}
