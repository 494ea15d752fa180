#include "dschat/sdk/rlhf/evaluator.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <iostream>

#include <fmt/format.h>

#include "dschat/sdk/metrics.h"
#include "dschat/sdk/rlhf/rewards.h"
#include "dschat/sdk/rlhf/rollout.h"
#include "dschat/sdk/tokenizer.h"

namespace dschat::rlhf {

Evaluator::Evaluator(EvaluatorOptions options, RolloutCollector& collector, CausalLM& reference, RewardSum& rewards,
                     std::shared_ptr<const Tokenizer> tokenizer, const std::vector<TokenizedExample>& held_out,
                     const std::vector<TextExample>& held_out_rows)
    : o_(std::move(options)), collector_(collector), reference_(reference), rewards_(rewards),
      tokenizer_(std::move(tokenizer)), held_out_(held_out), held_out_rows_(held_out_rows) {
  const auto available = static_cast<int64_t>(held_out_.size());
  const int64_t n = o_.prompts > 0 ? std::min(o_.prompts, available) : available;
  for (int64_t i = 0; i < n; ++i) indices_.push_back(i);
}

Evaluation Evaluator::evaluate(CausalLM& model, const SamplingOptions& sampling) {
  Evaluation e;
  e.prompts = static_cast<int64_t>(indices_.size());
  if (indices_.empty()) return e;
  double score_sum = 0.0, kl_sum = 0.0, len_sum = 0.0;
  std::vector<double> part_sums(rewards_.rewards().size(), 0.0);
  const auto batch_size = static_cast<size_t>(o_.batch_size);
  for (size_t begin = 0; begin < indices_.size(); begin += batch_size) {
    std::vector<int64_t> idx(indices_.begin() + static_cast<std::ptrdiff_t>(begin),
                             indices_.begin() + static_cast<std::ptrdiff_t>(std::min(indices_.size(), begin + batch_size)));
    PromptBatch batch = rollout_prompts(held_out_, idx, o_.max_prompt_seq_len, o_.pad_id, o_.trim_prompt_padding);
    GenerationResult out = collector_.generate(model, batch, sampling);
    at::NoGradGuard no_grad;
    const int64_t P = out.prompt_length;
    const auto& seq = out.sequences;
    auto mask = experience_mask(seq, o_.pad_id);
    auto scores = rewards_.score(seq, out.answer_mask, P, o_.pad_id, rollout_examples(held_out_rows_, held_out_, idx));
    auto logp = frozen_answer_logprobs(model, seq, mask, P - 1);
    auto ref = frozen_answer_logprobs(reference_, seq, mask, P - 1);
    auto action = mask.slice(1, P).to(at::kFloat);  // actions from start = P - 1
    kl_sum += ((logp.slice(1, P - 1) - ref.slice(1, P - 1)) * action).sum().item<double>();
    score_sum += scores.total.sum().item<double>();
    for (size_t i = 0; i < scores.parts.size(); ++i) part_sums[i] += scores.parts[i].second.sum().item<double>();
    len_sum += out.answer_mask.sum().item<double>();
    if (e.sample.empty()) {
      auto row = seq[0].slice(0, P).to(at::kCPU);
      std::vector<int64_t> ids(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
      e.sample = tokenizer_->decode(ids, /*skip_special_tokens=*/true);
    }
  }
  const double n = static_cast<double>(e.prompts);
  e.reward = score_sum / n;
  e.kl = kl_sum / n;
  e.answer_len = len_sum / n;
  for (size_t i = 0; i < part_sums.size(); ++i) e.parts.emplace_back(rewards_.rewards()[i].name, part_sums[i] / n);
  return e;
}

void Evaluator::report(const Evaluation& e, MetricsSink& metrics, int64_t step, const std::string& prefix) const {
  metrics.scalar(prefix + "reward", e.reward, step);
  metrics.scalar(prefix + "kl", e.kl, step);
  metrics.scalar(prefix + "answer_len", e.answer_len, step);
  std::string parts;
  if (e.parts.size() > 1) {
    for (const auto& [name, mean] : e.parts) {
      metrics.scalar(prefix + "reward/" + name, mean, step);
      parts += fmt::format(" {} {:.4f}", name, mean);
    }
  }
  std::cout << fmt::format("stage {}: step {} {}reward {:.4f}{} {}kl {:.4f} answer_len {:.1f} ({} prompts); e.g. "
                           "\"{}\"\n",
                           o_.stage, step, prefix, e.reward, parts, prefix, e.kl, e.answer_len, e.prompts, e.sample);
}

void Evaluator::run(CausalLM& model, const SamplingOptions& sampling, MetricsSink& metrics, int64_t step,
                    const std::string& prefix) {
  if (indices_.empty()) return;
  SamplingOptions greedy = sampling;
  greedy.do_sample = false;
  report(evaluate(model, greedy), metrics, step, prefix);
}

}  // namespace dschat::rlhf
