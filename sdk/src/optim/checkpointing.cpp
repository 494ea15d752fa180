// Activation checkpointing: LibTorch has none in C++. A custom autograd Function runs the block without grad in
// forward (keeping only its input) and, in backward, recomputes it with grad enabled and backpropagates through
// the recomputed graph; parameter gradients accumulate into .grad as in any backward pass (reentrant backward, as
// PyTorch's torch.utils.checkpoint(use_reentrant=True)).
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "dschat/sdk/optim.h"

namespace dschat {

namespace {

// What backward needs besides the input: the block, and the RNG / autocast state the forward pass ran under.
struct CheckpointState : torch::CustomClassHolder {
  std::function<at::Tensor(const at::Tensor&)> block;
  at::Device device = at::kCPU;
  at::Tensor cpu_rng, device_rng;
  bool autocast = false;
  at::ScalarType autocast_dtype = at::kBFloat16;
};

at::Tensor generator_state(at::Device device) {
  auto gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_generator_state(at::Device device, const at::Tensor& state) {
  auto gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden,
                            c10::intrusive_ptr<CheckpointState> state) {
    state->device = hidden.device();
    state->cpu_rng = generator_state(at::kCPU);
    if (!state->device.is_cpu()) state->device_rng = generator_state(state->device);
    state->autocast = at::autocast::is_autocast_enabled(state->device.type());
    if (state->autocast) state->autocast_dtype = at::autocast::get_autocast_dtype(state->device.type());
    ctx->save_for_backward({hidden});
    ctx->saved_data["state"] = c10::IValue::make_capsule(state);
    return state->block(hidden);  // Function::apply runs forward with grad mode off
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto holder = ctx->saved_data["state"].toCapsule();
    auto* state = static_cast<CheckpointState*>(holder.get());
    at::Tensor input = ctx->get_saved_variables()[0].detach().requires_grad_(true);

    // Replay the forward pass's random draws, then put the current streams back.
    at::Tensor cpu_now = generator_state(at::kCPU);
    at::Tensor device_now = state->device.is_cpu() ? at::Tensor() : generator_state(state->device);
    set_generator_state(at::kCPU, state->cpu_rng);
    if (device_now.defined()) set_generator_state(state->device, state->device_rng);
    at::Tensor output;
    {
      at::AutoGradMode grad(true);
      const auto type = state->device.type();
      const bool autocast_before = at::autocast::is_autocast_enabled(type);
      const auto dtype_before = at::autocast::get_autocast_dtype(type);
      at::autocast::set_autocast_enabled(type, state->autocast);
      if (state->autocast) at::autocast::set_autocast_dtype(type, state->autocast_dtype);
      try {
        output = state->block(input);
      } catch (...) {
        at::autocast::set_autocast_enabled(type, autocast_before);
        at::autocast::set_autocast_dtype(type, dtype_before);
        throw;
      }
      at::autocast::set_autocast_enabled(type, autocast_before);
      at::autocast::set_autocast_dtype(type, dtype_before);
    }
    set_generator_state(at::kCPU, cpu_now);
    if (device_now.defined()) set_generator_state(state->device, device_now);

    if (output.requires_grad()) torch::autograd::backward({output}, {grad_outputs[0]});
    return {input.grad(), at::Tensor()};
  }
};

}  // namespace

at::Tensor checkpointed(std::function<at::Tensor(const at::Tensor&)> block, const at::Tensor& hidden) {
  auto state = c10::make_intrusive<CheckpointState>();
  state->block = std::move(block);
  // The output must require grad for backward to reach the block's parameters even when nothing before the block
  // trains (only_optimize_lora with a frozen embedding: DeepSpeed-Chat's "element 0 does not require grad").
  at::Tensor input = hidden.requires_grad() ? hidden : hidden.detach().requires_grad_(true);
  return CheckpointFunction::apply(input, state);
}

}  // namespace dschat
