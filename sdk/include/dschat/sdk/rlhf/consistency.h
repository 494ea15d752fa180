#pragma once
// The hybrid engine's generation-vs-training log-prob check as an RL stage configures it (the stage keys
// consistency_threshold, consistency_statistic, consistency_sample_rows); RolloutCollector runs it.
//
//   ConsistencyCheckConfig c = read_consistency_check(stage_table);     // in the option reader
//   apply_consistency_check(c, actor->dtype(), rollout_options);         // once the actor is loaded
#include <cstdint>
#include <optional>
#include <string>

#include <c10/core/ScalarType.h>

#include "dschat/sdk/export.h"

namespace dschat {

class ConfigTable;

namespace rlhf {

struct RolloutOptions;

// What is unset follows the actor's dtype: fp32 compares the largest difference with 1e-3, bf16 / fp16 the mean
// difference with 0.1 (rounding alone moves single tokens by more than that).
struct ConsistencyCheckConfig {
  std::optional<double> threshold;
  std::optional<std::string> statistic;  // "max" | "mean"
  int64_t sample_rows = 2;               // 0: every row
};

DSCHAT_SDK_API ConsistencyCheckConfig read_consistency_check(const ConfigTable& stage);
// Sets the options' consistency_* fields for an actor of `actor_dtype`.
DSCHAT_SDK_API void apply_consistency_check(const ConsistencyCheckConfig& config, at::ScalarType actor_dtype,
                                            RolloutOptions& options);

}  // namespace rlhf
}  // namespace dschat
