// `length-penalty`: a rule reward against rambling. Each row scores
//
//   -coefficient * max(0, answer_tokens - max_tokens) / max_tokens
//
// where answer_tokens = the row's generated tokens (answer_mask summed, eos included): 0 up to max_tokens, then
// a penalty growing linearly with the excess, -coefficient when the answer is twice max_tokens long. It reads
// no data field and no model.
//
// Options: max_tokens (required, >= 1), coefficient (1.0, >= 0).
#include <memory>
#include <stdexcept>

#include <ATen/ops/clamp_min.h>
#include <fmt/format.h>

#include "dschat/sdk/plugin.h"
#include "dschat/sdk/reward.h"

namespace {

using namespace dschat;

class LengthPenalty : public RewardFunction {
 public:
  explicit LengthPenalty(const ConfigTable& table)
      : max_tokens_(table.get_int("max_tokens", std::nullopt, 1)),
        coefficient_(table.get_float("coefficient", 1.0, 0.0)) {}

  at::Tensor score(const RewardBatch& batch) override {
    if (!batch.answer_mask.defined() || batch.answer_mask.dim() != 2)
      throw std::invalid_argument("length-penalty: the batch needs an answer_mask [B, answer length]");
    const auto tokens = batch.answer_mask.to(at::kFloat).sum(1);
    const double max_tokens = static_cast<double>(max_tokens_);
    return at::clamp_min(tokens - max_tokens, 0.0) * (-coefficient_ / max_tokens);
  }

 private:
  int64_t max_tokens_;
  double coefficient_;
};

}  // namespace

DSCHAT_PLUGIN("length-penalty", "0.1.0", "rule reward: a penalty for answers longer than max_tokens") {
  registrar.add<dschat::RewardFunction>(
      "length-penalty", "-coefficient * max(0, answer tokens - max_tokens) / max_tokens",
      [](const dschat::ConfigTable& options) { return std::make_shared<LengthPenalty>(options); });
}
