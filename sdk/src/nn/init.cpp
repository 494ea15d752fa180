#include "dschat/sdk/nn/init.h"

#include <ATen/core/grad_mode.h>

namespace dschat {

namespace {
thread_local bool skip_init = false;
}  // namespace

SkipWeightInit::SkipWeightInit() : previous_(skip_init) { skip_init = true; }
SkipWeightInit::~SkipWeightInit() { skip_init = previous_; }

bool weight_init_skipped() { return skip_init; }

at::Tensor& init_normal(at::Tensor& weight, double mean, double std) {
  if (skip_init) return weight;
  at::NoGradGuard no_grad;
  weight.normal_(mean, std);
  return weight;
}

}  // namespace dschat
