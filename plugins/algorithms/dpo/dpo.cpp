// Algorithm "dpo": DeepSpeed-Chat's step2_dpo_finetuning, direct preference optimisation on the pairwise data, an
// alternative to reward-model training followed by PPO. The policy starts from the stage's model (usually the SFT
// output) and a frozen copy of the same checkpoint is the reference. Per pair, with log-probs summed over the
// tokens from the first one where chosen and rejected differ (dschat/sdk/preference_loss.h):
//   logits = beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r)))
//   loss   = -logsigmoid(logits) * (1 - label_smoothing) - logsigmoid(-logits) * label_smoothing
// Metrics: the loss, and per pair the implicit rewards beta * (log pi - log ref) of both answers, their margin and
// the reward accuracy (chosen > rejected), in training (train/*) and on the held-out pairs (eval/*) at the start,
// every eval_interval steps and at the end. Output: stage_dir/final, an HF folder of the policy (LoRA merged).
//
// Options: the shared training keys (dschat/sdk/optim.h), plus beta 0.1 and label_smoothing 0 (DeepSpeed-Chat's
// defaults). learning_rate defaults to 9.65e-6, the step-1 recipes' value (DeepSpeed-Chat's DPO takes step 1's
// arguments, whose 1e-3 default is meant for LoRA-only runs).
// The reference stays whole on every rank, on the policy's device, in the stage's dtype; under ZeRO-3 it is not
// sharded (DeepSpeed-Chat shards it with stage 3).
#include <c10/core/GradMode.h>

#include <iostream>

#include <fmt/format.h>

#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/config.h"
#include "dschat/sdk/data_collate.h"
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/metrics.h"
#include "dschat/sdk/optim.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/preference_loss.h"
#include "dschat/sdk/strategy.h"
#include "dschat/sdk/tokenizer.h"
#include "dschat/sdk/train_loop.h"

namespace {

using namespace dschat;

// What one batch of pairs gave: the loss (with grad in training) and the per-pair implicit rewards.
struct PairScores {
  DpoOutput dpo;
  int64_t tokens = 0;
};

// Sums of the per-batch means DeepSpeed-Chat's evaluation averages, and the same for a training micro-batch.
struct RewardStats {
  double loss = 0, chosen = 0, rejected = 0, accuracy = 0;
  int64_t batches = 0;
  void add(const PairScores& s) {
    loss += s.dpo.loss.item<double>();
    chosen += s.dpo.chosen_rewards.mean().item<double>();
    rejected += s.dpo.rejected_rewards.mean().item<double>();
    accuracy += (s.dpo.chosen_rewards > s.dpo.rejected_rewards).to(at::kFloat).mean().item<double>();
    ++batches;
  }
  void report(MetricsSink& metrics, const std::string& prefix, int64_t step) const {
    const double n = static_cast<double>(std::max<int64_t>(batches, 1));
    if (prefix != "train/") metrics.scalar(prefix + "loss", loss / n, step);  // the loop logs train/loss
    metrics.scalar(prefix + "chosen_reward", chosen / n, step);
    metrics.scalar(prefix + "rejected_reward", rejected / n, step);
    metrics.scalar(prefix + "reward_margin", (chosen - rejected) / n, step);
    metrics.scalar(prefix + "reward_accuracy", accuracy / n, step);
  }
};

class Dpo : public Algorithm {
 public:
  explicit Dpo(const ConfigTable& options)
      : options_(read_train_options(options, {9.65e-6, 0.0})),
        beta_(options.get_float("beta", 0.1, 0.0)),
        label_smoothing_(options.get_float("label_smoothing", 0.0, 0.0)) {
    if (beta_ <= 0.0) options.fail("beta", "must be > 0 (it scales the log-ratio margins)");
    if (label_smoothing_ >= 0.5) options.fail("label_smoothing", "must be in [0, 0.5)");
  }

  DataNeeds data_needs() const override { return {Phase::reward, true}; }
  std::map<std::string, std::string> model_roles() const override {
    return {{"model", options_.model_role_reference}};
  }
  // The policy trains on chosen + rejected (twice the rows) after the reference scored them without a graph.
  MemoryNeeds memory_needs(const MemoryNeedsContext& c) const override {
    MemoryNeeds needs = one_model_memory_needs(options_, c.max_seq_len, 2, /*value_head=*/false);
    ModelUse reference;
    reference.name = "reference";
    reference.role = "model";
    reference.dtype = options_.dtype;
    needs.models.push_back(reference);
    return needs;
  }

  void run(StageContext& context) override {
    auto handle = context.model("model");
    auto tokenizer = context.tokenizer("model");
    auto policy = context.load_model("model");
    auto reference = context.load_model("model");  // DeepSpeed-Chat: a second, frozen copy of the same weights
    if (options_.dtype) {
      policy->to(*options_.dtype);
      reference->to(*options_.dtype);
    }
    for (auto& p : reference->parameters()) p.set_requires_grad(false);
    reference->eval();
    apply_lora(context, *policy, *handle.family, options_);

    const auto& data = context.data();
    const auto& train = data.tokenized(Phase::reward, false, *tokenizer);
    const auto& eval = data.tokenized(Phase::reward, true, *tokenizer);
    for (const auto* set : {&train, &eval})
      for (const auto& ex : *set)
        if (ex.rejected.empty())
          throw std::invalid_argument("stage " + context.stage_name() +
                                      ": dpo needs pairs, but an example has no rejected answer");
    const int64_t max_seq_len = data.limits().max_seq_len;
    auto pad = tokenizer->eos_id() ? tokenizer->eos_id() : tokenizer->pad_id();  // as the sft stage pads
    if (!pad) throw std::invalid_argument("the tokenizer has neither a pad nor an eos token");
    const int64_t pad_id = *pad;

    OptimizerOptions optimizer = options_.optimizer;
    optimizer.total_steps = total_optimizer_steps(options_, static_cast<int64_t>(train.size()));
    auto engine = context.strategy().make_engine(policy, policy, optimizer);
    const std::string placed = context.strategy().place_frozen_model(*reference, engine->device(), {});
    std::cout << fmt::format("stage {}: reference: {}\n", context.stage_name(), placed);
    std::cout << fmt::format("stage {}: {} train / {} eval pairs, {} optimizer steps, beta {} label_smoothing {}, {}\n",
                             context.stage_name(), train.size(), eval.size(), optimizer.total_steps, beta_,
                             label_smoothing_, engine->describe());

    auto score = [&](const std::vector<TokenizedExample>& set, const std::vector<int64_t>& indices) {
      std::vector<const TokenizedExample*> rows;
      for (auto i : indices) rows.push_back(&set[static_cast<size_t>(i)]);
      PairBatch batch = collate_pairs(rows, max_seq_len, pad_id);
      trim_right_padding(batch.attention_mask, {&batch.input_ids});
      const at::Tensor ids = batch.input_ids.to(engine->device());
      const at::Tensor mask = batch.attention_mask.to(engine->device());
      const at::Tensor labels = pair_label_mask(ids, mask);
      at::Tensor logps = sequence_logprobs(engine->forward(ids, mask).logits, ids, labels);
      at::Tensor ref_logps;
      {
        at::NoGradGuard no_grad;
        ref_logps = sequence_logprobs(reference->forward(ids, mask).logits, ids, labels);
      }
      const int64_t B = batch.pairs;
      PairScores s;
      s.dpo = dpo_loss(logps.narrow(0, 0, B), logps.narrow(0, B, B), ref_logps.narrow(0, 0, B),
                       ref_logps.narrow(0, B, B), beta_, label_smoothing_);
      s.tokens = batch.attention_mask.sum().item<int64_t>();
      return s;
    };

    TrainLoopCallbacks callbacks;
    callbacks.hook_model = {handle.family, tokenizer};
    callbacks.micro_batch = [&](const std::vector<int64_t>& indices) -> std::pair<double, int64_t> {
      PairScores s = score(train, indices);
      engine->backward(s.dpo.loss);
      RewardStats stats;
      stats.add(s);
      stats.report(context.metrics(), "train/", engine->global_step() + 1);  // the step it contributes to
      return {s.dpo.loss.item<double>(), s.tokens};
    };
    callbacks.evaluate = [&](int64_t step) {
      if (eval.empty()) return;
      engine->train(false);
      at::NoGradGuard no_grad;
      RewardStats stats;
      for (const auto& indices : eval_batches(static_cast<int64_t>(eval.size()), options_.per_device_eval_batch_size,
                                              options_.eval_iters))
        stats.add(score(eval, indices));
      stats.report(context.metrics(), "eval/", step);
      const double n = static_cast<double>(stats.batches);
      std::cout << fmt::format("stage {}: step {} eval loss {:.4f} reward accuracy {:.4f} margin {:.4f} ({} pairs)\n",
                               context.stage_name(), step, stats.loss / n, stats.accuracy / n,
                               (stats.chosen - stats.rejected) / n, eval.size());
      engine->train(true);
    };
    run_train_loop(context, *engine, options_, static_cast<int64_t>(train.size()), callbacks);
    export_final_model(context, *engine, *policy, *handle.family, *tokenizer);
  }

 private:
  TrainOptions options_;
  double beta_, label_smoothing_;
};

}  // namespace

DSCHAT_PLUGIN("dpo", "0.1.0", "DeepSpeed-Chat step 2 (DPO): direct preference optimisation on pairs") {
  registrar.add<dschat::Algorithm>("dpo", "direct preference optimisation against a frozen reference copy",
                                   [](const dschat::ConfigTable& options) { return std::make_shared<Dpo>(options); });
}
