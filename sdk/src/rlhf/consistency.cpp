#include "dschat/sdk/rlhf/consistency.h"

#include "dschat/sdk/config.h"
#include "dschat/sdk/rlhf/rollout.h"

namespace dschat::rlhf {

ConsistencyCheckConfig read_consistency_check(const ConfigTable& t) {
  ConsistencyCheckConfig c;
  if (t.has("consistency_threshold")) c.threshold = t.get_float("consistency_threshold", {}, 0.0);
  if (t.has("consistency_statistic")) c.statistic = t.get_choice("consistency_statistic", {"max", "mean"}, "max");
  c.sample_rows = t.get_int("consistency_sample_rows", 2, 0);
  return c;
}

void apply_consistency_check(const ConsistencyCheckConfig& c, at::ScalarType actor_dtype, RolloutOptions& o) {
  const bool exact = actor_dtype == at::kFloat;
  o.consistency_threshold = c.threshold.value_or(exact ? 1e-3 : 0.1);
  o.consistency_mean = c.statistic.value_or(exact ? "max" : "mean") == "mean";
  o.consistency_sample_rows = c.sample_rows;
}

}  // namespace dschat::rlhf
