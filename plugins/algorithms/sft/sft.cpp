// Algorithm "sft": DeepSpeed-Chat step 1, supervised fine-tuning with the causal-LM loss on prompt + chosen
// answer + eos (labels = input_ids with padding ignored; the prompt is not masked, as DeepSpeed-Chat does).
// Evaluation: perplexity = exp(mean eval-batch loss), at the start, every eval_interval steps and at the end.
// Output: stage_dir/final, an HF folder (LoRA merged into the weights) with the tokenizer.
//
// Defaults are DeepSpeed-Chat's step-1 main.py except learning_rate: 9.65e-6, the value its OPT-1.3b
// single-node recipe passes (main.py's own 1e-3 default is meant for LoRA-only runs).
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/exp.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <iostream>

#include <fmt/format.h>

#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/data_collate.h"
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/optim.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/strategy.h"
#include "dschat/sdk/tokenizer.h"
#include "dschat/sdk/train_loop.h"

namespace {

using namespace dschat;

// HF's causal-LM loss: logits[:, :-1] predict labels[:, 1:], -100 ignored, mean over the counted tokens, fp32.
at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& labels) {
  const int64_t V = logits.size(-1);
  auto shifted = logits.slice(1, 0, -1).to(at::kFloat).reshape({-1, V});
  auto targets = labels.slice(1, 1).to(logits.device()).reshape({-1});
  return at::cross_entropy_loss(shifted, targets, {}, at::Reduction::Mean, -100);
}

class Sft : public Algorithm {
 public:
  explicit Sft(const ConfigTable& options) : options_(read_train_options(options, {9.65e-6, 0.0})) {}

  DataNeeds data_needs() const override { return {Phase::sft, false}; }
  MemoryNeeds memory_needs(const MemoryNeedsContext& c) const override {
    return one_model_memory_needs(options_, c.max_seq_len, 1, /*value_head=*/false);
  }
  std::map<std::string, std::string> model_roles() const override {
    return {{"model", options_.model_role_reference}};
  }

  void run(StageContext& context) override {
    auto handle = context.model("model");
    auto tokenizer = context.tokenizer("model");
    auto lm = context.load_model("model");
    if (options_.dtype) lm->to(*options_.dtype);
    apply_lora(context, *lm, *handle.family, options_);
    const auto& data = context.data();
    const auto& train = data.tokenized(Phase::sft, false, *tokenizer);
    const auto& eval = data.tokenized(Phase::sft, true, *tokenizer);
    const int64_t max_seq_len = data.limits().max_seq_len;
    // DeepSpeed-Chat pads with eos (tokenizer.pad_token = eos_token) for every family but LLaMA, which has none.
    auto pad = tokenizer->eos_id() ? tokenizer->eos_id() : tokenizer->pad_id();
    if (!pad) throw std::invalid_argument("the tokenizer has neither a pad nor an eos token");
    const int64_t pad_id = *pad;

    OptimizerOptions optimizer = options_.optimizer;
    optimizer.total_steps = total_optimizer_steps(options_, static_cast<int64_t>(train.size()));
    auto engine = context.strategy().make_engine(lm, lm, optimizer);
    std::cout << fmt::format("stage {}: {} train / {} eval examples, {} optimizer steps, {}\n", context.stage_name(),
                             train.size(), eval.size(), optimizer.total_steps, engine->describe());

    auto batch_of = [&](const std::vector<TokenizedExample>& set, const std::vector<int64_t>& indices) {
      std::vector<const TokenizedExample*> rows;
      for (auto i : indices) rows.push_back(&set[static_cast<size_t>(i)]);
      SftBatch batch = collate_sft(rows, max_seq_len, pad_id);
      trim_right_padding(batch.attention_mask, {&batch.input_ids, &batch.labels});
      return batch;
    };

    TrainLoopCallbacks callbacks;
    callbacks.hook_model = {handle.family, tokenizer};
    callbacks.micro_batch = [&](const std::vector<int64_t>& indices) -> std::pair<double, int64_t> {
      SftBatch batch = batch_of(train, indices);
      auto out = engine->forward(batch.input_ids, batch.attention_mask);
      auto loss = causal_lm_loss(out.logits, batch.labels);
      engine->backward(loss);
      return {loss.item<double>(), batch.attention_mask.sum().item<int64_t>()};
    };
    callbacks.evaluate = [&](int64_t step) {
      if (eval.empty()) return;
      engine->train(false);
      at::NoGradGuard no_grad;
      double sum = 0.0;
      int64_t count = 0;
      for (const auto& indices : eval_batches(static_cast<int64_t>(eval.size()), options_.per_device_eval_batch_size,
                                              options_.eval_iters)) {
        SftBatch batch = batch_of(eval, indices);
        auto out = engine->forward(batch.input_ids, batch.attention_mask);
        sum += causal_lm_loss(out.logits, batch.labels).item<double>();
        ++count;
      }
      const double loss = sum / static_cast<double>(count);
      const double perplexity = std::exp(loss);  // inf on overflow, as DeepSpeed-Chat reports it
      context.metrics().scalar("eval/loss", loss, step);
      context.metrics().scalar("eval/perplexity", perplexity, step);
      std::cout << fmt::format("stage {}: step {} eval loss {:.4f} perplexity {:.4f}\n", context.stage_name(), step,
                               loss, perplexity);
      engine->train(true);
    };
    run_train_loop(context, *engine, options_, static_cast<int64_t>(train.size()), callbacks);
    export_final_model(context, *engine, *lm, *handle.family, *tokenizer);
  }

 private:
  TrainOptions options_;
};

}  // namespace

DSCHAT_PLUGIN("sft", "0.1.0", "DeepSpeed-Chat step 1: supervised fine-tuning") {
  registrar.add<dschat::Algorithm>("sft", "supervised fine-tuning (causal-LM loss on prompt + answer)",
                                   [](const dschat::ConfigTable& options) { return std::make_shared<Sft>(options); });
}
