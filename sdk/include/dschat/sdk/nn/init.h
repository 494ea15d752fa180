#pragma once
// Weight initialisation that can be switched off while a checkpoint is about to overwrite every weight:
// from_pretrained builds the model under SkipWeightInit, so loading 1.3B parameters does not first draw 1.3B
// random numbers (transformers does the same with its meta-device init).
#include <ATen/core/Tensor.h>

#include "dschat/sdk/export.h"

namespace dschat {

// RAII: while alive on this thread, init_normal leaves tensors as allocated.
class DSCHAT_SDK_API SkipWeightInit {
 public:
  SkipWeightInit();
  ~SkipWeightInit();
  SkipWeightInit(const SkipWeightInit&) = delete;
  SkipWeightInit& operator=(const SkipWeightInit&) = delete;

 private:
  bool previous_;
};

DSCHAT_SDK_API bool weight_init_skipped();

// normal_(mean, std) unless a SkipWeightInit is active; returns `weight`.
DSCHAT_SDK_API at::Tensor& init_normal(at::Tensor& weight, double mean, double std);

}  // namespace dschat
