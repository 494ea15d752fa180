// Algorithm "reward": DeepSpeed-Chat step 2, reward-model training. The model is the base transformer without
// its LM head plus a bias-free value head (dschat/sdk/reward_model.h); the loss is DeepSpeed-Chat's per-token
// pairwise loss over the span where chosen and rejected differ (dschat/sdk/reward_loss.h). Evaluation: accuracy
// of score(chosen) > score(rejected) and the mean scores, at the start, every eval_interval steps and at the end.
// Output: stage_dir/final = HF folder of the base model + value_head.safetensors ("v_head.weight") +
// reward_model.json (pad id, num_padding_at_beginning) + tokenizer.
//
// Defaults: DeepSpeed-Chat step-2 main.py (learning_rate 5e-5) with its OPT recipes' weight_decay 0.1.
// num_padding_at_beginning: DeepSpeed-Chat's default is 1 (OPT's tokenizer starts every sequence with </s>,
// which is also its pad); "auto" (-1, the default here) uses 1 when the tokenizer's first token is the pad token
// and 0 otherwise, which is what its OPT and LLaMA-2 scripts set by hand.
#include <c10/core/GradMode.h>

#include <iostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/data_collate.h"
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/optim.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/reward_loss.h"
#include "dschat/sdk/reward_model.h"
#include "dschat/sdk/strategy.h"
#include "dschat/sdk/tokenizer.h"
#include "dschat/sdk/train_loop.h"

namespace {

using namespace dschat;

class Reward : public Algorithm {
 public:
  explicit Reward(const ConfigTable& options)
      : options_(read_train_options(options, {5e-5, 0.1})),
        num_padding_at_beginning_(options.get_int("num_padding_at_beginning", -1, -1)) {
    if (!options.has("eval_iters")) options_.eval_iters = 100;  // DeepSpeed-Chat step 2's default
  }

  DataNeeds data_needs() const override { return {Phase::reward, true}; }
  // Chosen and rejected run as one batch of twice the rows, read through the value head.
  MemoryNeeds memory_needs(const MemoryNeedsContext& c) const override {
    return one_model_memory_needs(options_, c.max_seq_len, 2, /*value_head=*/true);
  }
  std::map<std::string, std::string> model_roles() const override {
    return {{"model", options_.model_role_reference}};
  }

  void run(StageContext& context) override {
    auto handle = context.model("model");
    auto tokenizer = context.tokenizer("model");
    auto base = context.load_model("model");
    if (options_.dtype) base->to(*options_.dtype);
    auto rm = std::make_shared<RewardModel>(base);
    // DeepSpeed-Chat freezes the value head too with only_optimize_lora; a frozen random head cannot learn a
    // ranking, so it trains.
    apply_lora(context, *rm, *handle.family, options_, {"v_head"});
    const auto& data = context.data();
    const auto& train = data.tokenized(Phase::reward, false, *tokenizer);
    const auto& eval = data.tokenized(Phase::reward, true, *tokenizer);
    const int64_t max_seq_len = data.limits().max_seq_len;
    RewardConventions conventions = reward_conventions(*tokenizer);
    if (num_padding_at_beginning_ >= 0) conventions.num_padding_at_beginning = num_padding_at_beginning_;
    const int64_t pad_id = conventions.pad_token_id;
    const int64_t npb = conventions.num_padding_at_beginning;
    for (const auto* set : {&train, &eval})
      for (const auto& ex : *set)
        if (ex.rejected.empty())
          throw std::invalid_argument("stage " + context.stage_name() +
                                      ": the reward stage needs pairs, but an example has no rejected answer");

    OptimizerOptions optimizer = options_.optimizer;
    optimizer.total_steps = total_optimizer_steps(options_, static_cast<int64_t>(train.size()));
    auto engine = context.strategy().make_engine(rm, rm->base, optimizer);
    std::cout << fmt::format("stage {}: {} train / {} eval pairs, {} optimizer steps, pad {} "
                             "num_padding_at_beginning {}, {}\n",
                             context.stage_name(), train.size(), eval.size(), optimizer.total_steps, pad_id, npb,
                             engine->describe());

    auto forward = [&](const std::vector<TokenizedExample>& set, const std::vector<int64_t>& indices) {
      std::vector<const TokenizedExample*> rows;
      for (auto i : indices) rows.push_back(&set[static_cast<size_t>(i)]);
      PairBatch batch = collate_pairs(rows, max_seq_len, pad_id);
      trim_right_padding(batch.attention_mask, {&batch.input_ids});
      auto out = engine->forward(batch.input_ids, batch.attention_mask,
                                 {.return_hidden = true, .return_logits = false});
      auto values = rm->values_from_hidden(out.hidden);
      return std::make_pair(reward_pair_loss(values, batch.input_ids, pad_id, npb),
                            batch.attention_mask.sum().item<int64_t>());
    };

    TrainLoopCallbacks callbacks;
    callbacks.hook_model = {handle.family, tokenizer};
    callbacks.micro_batch = [&](const std::vector<int64_t>& indices) -> std::pair<double, int64_t> {
      auto [out, tokens] = forward(train, indices);
      engine->backward(out.loss);
      return {out.loss.item<double>(), tokens};
    };
    callbacks.evaluate = [&](int64_t step) {
      if (eval.empty()) return;
      engine->train(false);
      at::NoGradGuard no_grad;
      int64_t correct = 0, total = 0, batches = 0;
      double chosen = 0.0, rejected = 0.0;
      const int64_t bs = options_.per_device_eval_batch_size;
      for (int64_t start = 0; start < static_cast<int64_t>(eval.size()); start += bs) {
        if (options_.eval_iters > 0 && batches == options_.eval_iters) break;
        std::vector<int64_t> indices;
        for (int64_t i = start; i < std::min<int64_t>(start + bs, eval.size()); ++i) indices.push_back(i);
        auto [out, tokens] = forward(eval, indices);
        correct += (out.chosen_scores > out.rejected_scores).sum().item<int64_t>();
        total += out.chosen_scores.size(0);
        chosen += out.chosen_scores.mean().item<double>();  // mean of batch means, as DeepSpeed-Chat
        rejected += out.rejected_scores.mean().item<double>();
        ++batches;
      }
      const double accuracy = static_cast<double>(correct) / static_cast<double>(total);
      context.metrics().scalar("eval/accuracy", accuracy, step);
      context.metrics().scalar("eval/chosen_score", chosen / batches, step);
      context.metrics().scalar("eval/rejected_score", rejected / batches, step);
      std::cout << fmt::format("stage {}: step {} eval accuracy {:.4f} chosen {:.4f} rejected {:.4f} ({} pairs)\n",
                               context.stage_name(), step, accuracy, chosen / batches, rejected / batches, total);
      engine->train(true);
    };
    run_train_loop(context, *engine, options_, static_cast<int64_t>(train.size()), callbacks);

    auto whole = engine->gather_parameters();  // ZeRO-3: every weight back on every rank for the export
    if (world().is_main())
      save_reward_model(*rm, *handle.family, tokenizer.get(), context.stage_dir() / "final",
                        reward_conventions_json(conventions));
  }

 private:
  TrainOptions options_;
  int64_t num_padding_at_beginning_;
};

}  // namespace

DSCHAT_PLUGIN("reward", "0.1.0", "DeepSpeed-Chat step 2: reward-model training") {
  registrar.add<dschat::Algorithm>("reward", "reward model: value head on the base model, pairwise ranking loss",
                                   [](const dschat::ConfigTable& options) {
                                     return std::make_shared<Reward>(options);
                                   });
}
