// DynamicLossScale (dschat/sdk/loss_scale.h).
#include "dschat/sdk/loss_scale.h"

#include <algorithm>

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include "dschat/sdk/config.h"
#include "dschat/sdk/strategy.h"

namespace dschat {

DynamicLossScale::DynamicLossScale(bool enabled, const OptimizerOptions& options)
    : enabled_(enabled), scale_(enabled ? options.initial_loss_scale : 1.0), min_scale_(options.min_loss_scale),
      window_(options.loss_scale_window) {
  TORCH_CHECK(!enabled || (options.initial_loss_scale > 0 && options.min_loss_scale > 0 && window_ >= 1),
              "fp16 loss scale: initial_loss_scale and min_loss_scale must be > 0 and loss_scale_window >= 1");
}

void read_loss_scale_options(const ConfigTable& table, OptimizerOptions& options) {
  options.initial_loss_scale = table.get_float("initial_loss_scale", 65536.0, 0.0);
  options.loss_scale_window = table.get_int("loss_scale_window", 100, 1);
  options.min_loss_scale = table.get_float("min_loss_scale", 1.0, 0.0);
  if (options.initial_loss_scale <= 0.0) table.fail("initial_loss_scale", "a loss scale must be > 0");
  if (options.min_loss_scale <= 0.0) table.fail("min_loss_scale", "a loss scale must be > 0");
  if (options.min_loss_scale > options.initial_loss_scale)
    table.fail("min_loss_scale", "is above initial_loss_scale");
}

void DynamicLossScale::applied() {
  if (enabled_ && ++good_steps_ % window_ == 0) scale_ *= 2.0;
}

void DynamicLossScale::overflowed() {
  if (!enabled_) return;
  scale_ = std::max(min_scale_, scale_ / 2.0);
  good_steps_ = 0;
}

void DynamicLossScale::save_to(nlohmann::json& state) const {
  state["loss_scale"] = scale_;
  state["good_steps"] = good_steps_;
}

void DynamicLossScale::restore_from(const nlohmann::json& state) {
  if (state.contains("loss_scale")) scale_ = state.at("loss_scale").get<double>();
  if (state.contains("good_steps")) good_steps_ = state.at("good_steps").get<int64_t>();
}

}  // namespace dschat
