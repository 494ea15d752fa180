#pragma once
// AdamW on the host, for ZeRO's "offload optimizer states to CPU" (DeepSpeed's DeepSpeedCPUAdam): fp32 master
// weights and moments live in host memory, and the step is one vectorised, multi-threaded pass over them that can
// also write the updated weights into the (bf16/fp16/fp32) model copy, so refreshing the model costs no second
// pass over memory. The arithmetic is torch.optim.AdamW's (decoupled weight decay).
#include <cstdint>

#include <ATen/core/Tensor.h>

#include "dschat/sdk/export.h"

namespace dschat {

struct AdamWHyper {
  double lr = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.0;
  int64_t step = 1;  // the 1-based step being taken (bias corrections 1 - beta^step)
};

// One AdamW step, in place:
//   p -= lr*wd*p;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;
//   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
// param, grad, exp_avg, exp_avg_sq: contiguous fp32 CPU tensors of one numel. model_copy (optional): a contiguous
// bf16/fp16/fp32 CPU tensor of that numel that receives the updated param, cast (round to nearest even).
// Threads: at::get_num_threads().
DSCHAT_SDK_API void cpu_adamw_step(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg,
                                   at::Tensor& exp_avg_sq, const AdamWHyper& hyper,
                                   at::Tensor* model_copy = nullptr);

// The kernel cpu_adamw_step uses here: "avx2" (x86-64 with AVX2+FMA+F16C) or "portable" (at::vec at the build's
// baseline ISA; also chosen when the environment sets DSCHAT_CPU_ADAM_PORTABLE=1).
DSCHAT_SDK_API const char* cpu_adam_kernel();

}  // namespace dschat
