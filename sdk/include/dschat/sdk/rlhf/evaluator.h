#pragma once
// Evaluation of an RL stage (DeepSpeed-Chat's step-3 eval): greedy answers to the held-out prompts, their mean
// reward (the stage's RewardSum), the mean per-sequence KL to the reference, and the mean answer length.
//
//   Evaluator evaluator(options, collector, *reference, rewards, tokenizer, held_out, held_out_rows);
//   evaluator.run(*actor, greedy, metrics, step, "eval/");   // eval/reward, eval/kl, eval/answer_len
//
// With several rewards each one's mean is logged too (eval/reward/<name>): with an exact-answer reward, that is
// the held-out accuracy. The caller gathers sharded weights (ZeRO-3) for the evaluated model.
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dschat/sdk/data.h"
#include "dschat/sdk/export.h"
#include "dschat/sdk/generation.h"

namespace dschat {

class CausalLM;
class MetricsSink;
class Tokenizer;

namespace rlhf {

class RewardSum;
class RolloutCollector;

struct EvaluatorOptions {
  std::string stage;             // for messages
  int64_t prompts = 0;           // the first N held-out prompts; 0: all
  int64_t batch_size = 16;       // prompts per generate() call
  int64_t max_prompt_seq_len = 256;
  int64_t pad_id = 0;
  bool trim_prompt_padding = true;
};

struct Evaluation {
  int64_t prompts = 0;
  double reward = 0.0, kl = 0.0, answer_len = 0.0;       // means over the prompts
  std::vector<std::pair<std::string, double>> parts;     // each reward's mean
  std::string sample;                                    // the first prompt's answer
};

class DSCHAT_SDK_API Evaluator {
 public:
  // The references must outlive the evaluator; `held_out` are the tokenized held-out rows, `held_out_rows` the
  // text rows they index (DataSource::examples(phase, true)).
  Evaluator(EvaluatorOptions options, RolloutCollector& collector, CausalLM& reference, RewardSum& rewards,
            std::shared_ptr<const Tokenizer> tokenizer, const std::vector<TokenizedExample>& held_out,
            const std::vector<TextExample>& held_out_rows);

  bool empty() const { return indices_.empty(); }
  Evaluation evaluate(CausalLM& model, const SamplingOptions& sampling);
  // Logs prefix + reward / kl / answer_len (and reward/<name> with several rewards) at `step`, prints a line.
  void report(const Evaluation& e, MetricsSink& metrics, int64_t step, const std::string& prefix) const;
  // evaluate() with greedy decoding (do_sample off), then report(); nothing when there are no held-out prompts.
  void run(CausalLM& model, const SamplingOptions& sampling, MetricsSink& metrics, int64_t step,
           const std::string& prefix);

 private:
  EvaluatorOptions o_;
  RolloutCollector& collector_;
  CausalLM& reference_;
  RewardSum& rewards_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  const std::vector<TokenizedExample>& held_out_;
  const std::vector<TextExample>& held_out_rows_;
  std::vector<int64_t> indices_;
};

}  // namespace rlhf
}  // namespace dschat
