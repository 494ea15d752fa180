// Algorithm "rloo": REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"). No
// critic: each prompt is answered num_samples times, and an answer's baseline is the mean reward of the other
// answers to its prompt, A_i = r_i - mean_{j != i} r_j (unbiased: the baseline does not depend on the answer).
// The loss is the clipped surrogate (one ppo_epoch: plain REINFORCE, the ratio is 1) plus beta * k3 KL to the
// frozen reference, token-mean by default. The loop, rollouts, rewards, evaluation and checkpoints are the SDK's
// group trainer (dschat/sdk/rlhf/group_trainer.h); this plugin only chooses the advantage.
//
// Options: as grpo's (docs/algorithms.md) without std_normalize; loss_aggregation defaults to "token-mean".
#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/policy_gradient.h"
#include "dschat/sdk/rlhf/group_trainer.h"

namespace {

using namespace dschat;

class Rloo : public Algorithm {
 public:
  explicit Rloo(const ConfigTable& table)
      : o_(rlhf::read_group_trainer_options(table, "rloo",
                                            {.loss_aggregation = "token-mean", .reads_std_normalize = false})) {}

  DataNeeds data_needs() const override { return {Phase::ppo, false}; }
  std::map<std::string, std::string> model_roles() const override { return rlhf::group_trainer_roles(o_); }
  void run(StageContext& context) override { rlhf::run_group_trainer(o_, context, pg::leave_one_out_advantages); }

 private:
  rlhf::GroupTrainerOptions o_;
};

}  // namespace

DSCHAT_PLUGIN("rloo", "0.1.0", "RLOO: REINFORCE with a leave-one-out baseline, no critic") {
  registrar.add<dschat::Algorithm>("rloo", "RLOO: n answers per prompt, each against the mean of the others",
                                   [](const dschat::ConfigTable& options) { return std::make_shared<Rloo>(options); });
}
