// Algorithm "grpo": Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath), with DAPO's and
// Dr. GRPO's variants as options. No critic: each prompt is answered num_samples times, and an answer's advantage
// is its reward relative to its group's, A_i = (r_i - mean) / (std + 1e-4) (std_normalize = false: r_i - mean, as
// Dr. GRPO). The loss is the clipped surrogate plus beta * k3 KL to the frozen reference, aggregated per
// loss_aggregation. The loop, rollouts, rewards, evaluation and checkpoints are the SDK's group trainer
// (dschat/sdk/rlhf/group_trainer.h); this plugin only chooses the advantage.
//
// Options (group trainer, see docs/algorithms.md): actor (required), reference (= actor), rewards = [...] or
// reward = "<reward model stage>", num_samples 4 (>= 2), per_device_generation_batch_size 8 (prompts),
// per_device_training_batch_size 16 (answers), ppo_epochs 1, epochs 1, max_steps 0, learning_rate 1e-6,
// lr_scheduler "constant", num_warmup_steps 0, beta 0.04, cliprange 0.2, cliprange_high (= cliprange; DAPO's
// clip-higher), loss_aggregation "seq-mean" (GRPO; "token-mean" DAPO, "seq-mean-token-sum" Dr. GRPO),
// std_normalize true, eval_interval 0, eval_prompts 0, checkpoint_interval 0.
#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/policy_gradient.h"
#include "dschat/sdk/rlhf/group_trainer.h"

namespace {

using namespace dschat;

class Grpo : public Algorithm {
 public:
  explicit Grpo(const ConfigTable& table)
      : o_(rlhf::read_group_trainer_options(table, "grpo", {.loss_aggregation = "seq-mean"})) {}

  DataNeeds data_needs() const override { return {Phase::ppo, false}; }
  std::map<std::string, std::string> model_roles() const override { return rlhf::group_trainer_roles(o_); }
  void run(StageContext& context) override {
    const bool std_normalize = o_.std_normalize;
    rlhf::run_group_trainer(o_, context, [std_normalize](const at::Tensor& rewards, int64_t group_size) {
      return pg::group_advantages(rewards, group_size, std_normalize);
    });
  }

 private:
  rlhf::GroupTrainerOptions o_;
};

}  // namespace

DSCHAT_PLUGIN("grpo", "0.1.0", "GRPO: group-relative advantages, no critic (DAPO / Dr. GRPO variants)") {
  registrar.add<dschat::Algorithm>("grpo", "GRPO: n answers per prompt, advantages relative to the group's",
                                   [](const dschat::ConfigTable& options) { return std::make_shared<Grpo>(options); });
}
