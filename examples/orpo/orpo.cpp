// Algorithm "orpo": odds-ratio preference optimisation (Hong et al. 2024, "ORPO: Monolithic Preference
// Optimization without Reference Model"), an out-of-tree plugin built only against the installed SDK. One stage
// takes a base model to a preference-tuned one: the SFT loss on the chosen answer plus a term that raises the odds
// of the chosen answer against the rejected one. No reference model, so no second copy in memory and no SFT
// stage before it. Per pair, with logp the mean log-prob of an answer's tokens (orpo_loss.h):
//   log_odds(y) = logp(y) - log(1 - exp(logp(y)))
//   loss        = NLL(chosen answer tokens) + beta * mean(-logsigmoid(log_odds(chosen) - log_odds(rejected)))
//
// Why ORPO and not KTO as the example: this pipeline's preference data is pairwise (DeepSpeed-Chat's
// prompt/chosen/rejected), which ORPO consumes as it is, and ORPO needs no reference model, so one stage
// replaces SFT + DPO. KTO wants unpaired desirable/undesirable labels, a frozen reference and a KL estimate
// from mismatched pairs: more machinery, and data this pipeline does not have in that form.
//
// Options: the shared training keys (dschat/sdk/optim.h) and beta 0.1 (TRL's name and default for lambda).
// learning_rate defaults to TRL's ORPOConfig 1e-6. Metrics, named as TRL's ORPOTrainer logs them, per training
// micro-batch (train/*) and on the held-out pairs (eval/*) at the start, every eval_interval steps and at the end:
// loss (= nll_loss + or_loss), nll_loss, or_loss, log_odds_ratio (mean logsigmoid of the log-odds difference),
// log_odds_chosen (mean log-odds difference), rewards/chosen and rewards/rejected (beta * logp), rewards/accuracy,
// rewards/margin. Output: stage_dir/final, an HF folder of the model (LoRA merged).
#include <ATen/ops/arange.h>
#include <ATen/ops/tensor.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <iostream>
#include <stdexcept>

#include <fmt/format.h>

#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/config.h"
#include "dschat/sdk/data_collate.h"
#include "dschat/sdk/metrics.h"
#include "dschat/sdk/optim.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/preference_loss.h"
#include "dschat/sdk/strategy.h"
#include "dschat/sdk/tokenizer.h"
#include "dschat/sdk/train_loop.h"
#include "orpo_loss.h"

namespace {

using namespace dschat;

// A pair and where each of its rows' answer starts. TRL scores only the answer tokens (the prompt is masked),
// whereas the SDK's pair_label_mask scores from the first token where chosen and rejected differ, which would
// drop a shared answer start from the NLL; so the mask is made here. The prompt and prompt+answer are tokenized
// as separate strings (data_collate.h), so the answer starts where a row stops matching the prompt's tokens.
struct Pair {
  const TokenizedExample* example;
  int64_t chosen_start, rejected_start;
};

int64_t answer_start(const std::vector<int64_t>& prompt, const std::vector<int64_t>& row) {
  size_t n = 0;
  while (n < prompt.size() && n < row.size() && prompt[n] == row[n]) ++n;
  return static_cast<int64_t>(std::max<size_t>(n, 1));  // token 0 is never predicted
}

// Sums of per-batch means, reported as their average over the batches (as dpo's evaluation averages).
struct OrpoStats {
  double loss = 0, nll = 0, odds_ratio_loss = 0, log_odds_ratio = 0, log_odds_chosen = 0, chosen = 0, rejected = 0,
         accuracy = 0;
  int64_t batches = 0;
  void add(const orpo::OrpoOutput& o) {
    loss += o.loss.item<double>();
    nll += o.nll_loss.item<double>();
    odds_ratio_loss += o.or_loss.item<double>();
    log_odds_ratio += o.log_odds_ratio.item<double>();
    log_odds_chosen += o.log_odds_chosen.item<double>();
    chosen += o.chosen_rewards.mean().item<double>();
    rejected += o.rejected_rewards.mean().item<double>();
    accuracy += (o.chosen_rewards > o.rejected_rewards).to(at::kFloat).mean().item<double>();
    ++batches;
  }
  double mean(double sum) const { return sum / static_cast<double>(std::max<int64_t>(batches, 1)); }
  void report(MetricsSink& metrics, const std::string& prefix, int64_t step) const {
    if (prefix != "train/") metrics.scalar(prefix + "loss", mean(loss), step);  // the loop logs train/loss
    metrics.scalar(prefix + "nll_loss", mean(nll), step);
    metrics.scalar(prefix + "or_loss", mean(odds_ratio_loss), step);
    metrics.scalar(prefix + "log_odds_ratio", mean(log_odds_ratio), step);
    metrics.scalar(prefix + "log_odds_chosen", mean(log_odds_chosen), step);
    metrics.scalar(prefix + "rewards/chosen", mean(chosen), step);
    metrics.scalar(prefix + "rewards/rejected", mean(rejected), step);
    metrics.scalar(prefix + "rewards/accuracy", mean(accuracy), step);
    metrics.scalar(prefix + "rewards/margin", mean(chosen - rejected), step);
  }
};

class Orpo : public Algorithm {
 public:
  explicit Orpo(const ConfigTable& options)
      : options_(read_train_options(options, {1e-6, 0.0})), beta_(options.get_float("beta", 0.1, 0.0)) {
    if (beta_ <= 0.0) options.fail("beta", "must be > 0 (it weighs the odds-ratio term against the NLL)");
  }

  // The share of [data] that holds the pairs (DeepSpeed-Chat's step 2 share, as dpo reads).
  DataNeeds data_needs() const override { return {Phase::reward, true}; }
  std::map<std::string, std::string> model_roles() const override {
    return {{"model", options_.model_role_reference}};
  }

  void run(StageContext& context) override {
    auto handle = context.model("model");
    auto tokenizer = context.tokenizer("model");
    auto policy = context.load_model("model");  // the only model: ORPO has no reference
    if (options_.dtype) policy->to(*options_.dtype);
    apply_lora(context, *policy, *handle.family, options_);

    const auto& data = context.data();
    // Pairs whose answer was cut away entirely (the prompt fills max_seq_len) have no log-odds; drop them.
    int64_t dropped = 0;
    auto pairs_of = [&](const std::vector<TokenizedExample>& set) {
      std::vector<Pair> pairs;
      for (const auto& ex : set) {
        if (ex.rejected.empty())
          throw std::invalid_argument("stage " + context.stage_name() +
                                      ": orpo needs pairs, but an example has no rejected answer");
        Pair p{&ex, answer_start(ex.prompt, ex.chosen), answer_start(ex.prompt, ex.rejected)};
        const bool empty = p.chosen_start >= static_cast<int64_t>(ex.chosen.size()) ||
                           p.rejected_start >= static_cast<int64_t>(ex.rejected.size());
        if (empty)
          ++dropped;
        else
          pairs.push_back(p);
      }
      return pairs;
    };
    const auto train = pairs_of(data.tokenized(Phase::reward, false, *tokenizer));
    const auto eval = pairs_of(data.tokenized(Phase::reward, true, *tokenizer));
    const int64_t max_seq_len = data.limits().max_seq_len;
    auto pad = tokenizer->eos_id() ? tokenizer->eos_id() : tokenizer->pad_id();  // as the sft stage pads
    if (!pad) throw std::invalid_argument("the tokenizer has neither a pad nor an eos token");
    const int64_t pad_id = *pad;

    OptimizerOptions optimizer = options_.optimizer;
    optimizer.total_steps = total_optimizer_steps(options_, static_cast<int64_t>(train.size()));
    auto engine = context.strategy().make_engine(policy, policy, optimizer);
    std::cout << fmt::format("stage {}: {} train / {} eval pairs ({} dropped: no answer token within max_seq_len), "
                             "{} optimizer steps, beta {}, {}\n",
                             context.stage_name(), train.size(), eval.size(), dropped, optimizer.total_steps, beta_,
                             engine->describe());

    // One forward over the batch's chosen rows [0, B) and rejected rows [B, 2B), as dpo does.
    auto score = [&](const std::vector<Pair>& set, const std::vector<int64_t>& indices) {
      std::vector<const TokenizedExample*> rows;
      std::vector<int64_t> starts(2 * indices.size());
      for (size_t i = 0; i < indices.size(); ++i) {
        const Pair& p = set[static_cast<size_t>(indices[i])];
        rows.push_back(p.example);
        starts[i] = p.chosen_start;
        starts[indices.size() + i] = p.rejected_start;
      }
      PairBatch batch = collate_pairs(rows, max_seq_len, pad_id);
      at::Tensor labels = batch.attention_mask * at::arange(batch.input_ids.size(1), at::kLong).unsqueeze(0).ge(
                                                     at::tensor(starts, at::kLong).unsqueeze(1));
      trim_right_padding(batch.attention_mask, {&batch.input_ids, &labels});
      const at::Tensor ids = batch.input_ids.to(engine->device());
      const at::Tensor mask = batch.attention_mask.to(engine->device());
      labels = labels.to(engine->device());
      const at::Tensor sums = sequence_logprobs(engine->forward(ids, mask).logits, ids, labels);
      const at::Tensor tokens = labels.narrow(1, 1, labels.size(1) - 1).sum(1).to(at::kFloat);  // what sums cover
      const int64_t B = batch.pairs;
      auto out = orpo::orpo_loss(sums.narrow(0, 0, B), tokens.narrow(0, 0, B), sums.narrow(0, B, B),
                                 tokens.narrow(0, B, B), beta_);
      return std::make_pair(out, batch.attention_mask.sum().item<int64_t>());
    };

    TrainLoopCallbacks callbacks;
    callbacks.hook_model = {handle.family, tokenizer};
    callbacks.micro_batch = [&](const std::vector<int64_t>& indices) -> std::pair<double, int64_t> {
      auto [out, tokens] = score(train, indices);
      engine->backward(out.loss);
      OrpoStats stats;
      stats.add(out);
      stats.report(context.metrics(), "train/", engine->global_step() + 1);  // the step it contributes to
      return {out.loss.item<double>(), tokens};
    };
    callbacks.evaluate = [&](int64_t step) {
      if (eval.empty()) return;
      engine->train(false);
      at::NoGradGuard no_grad;
      OrpoStats stats;
      for (const auto& indices : eval_batches(static_cast<int64_t>(eval.size()), options_.per_device_eval_batch_size,
                                              options_.eval_iters))
        stats.add(score(eval, indices).first);
      stats.report(context.metrics(), "eval/", step);
      std::cout << fmt::format("stage {}: step {} eval loss {:.4f} (nll {:.4f}, or {:.4f}) reward accuracy {:.4f} "
                               "margin {:.4f}\n",
                               context.stage_name(), step, stats.mean(stats.loss), stats.mean(stats.nll),
                               stats.mean(stats.odds_ratio_loss), stats.mean(stats.accuracy),
                               stats.mean(stats.chosen - stats.rejected));
      engine->train(true);
    };
    run_train_loop(context, *engine, options_, static_cast<int64_t>(train.size()), callbacks);
    export_final_model(context, *engine, *policy, *handle.family, *tokenizer);
  }

 private:
  TrainOptions options_;
  double beta_;
};

}  // namespace

DSCHAT_PLUGIN("orpo", "0.1.0", "ORPO: odds-ratio preference optimisation on pairs, no reference model") {
  registrar.add<dschat::Algorithm>("orpo", "SFT loss plus an odds-ratio preference term, in one stage",
                                   [](const dschat::ConfigTable& options) { return std::make_shared<Orpo>(options); });
}
