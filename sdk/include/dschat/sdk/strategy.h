#pragma once
// Kind "strategy": wraps a model and its optimizer into an engine (single process, DDP, ZeRO, TP).
#include <filesystem>
#include <memory>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

namespace dschat {

class CausalLM;

// The engine a strategy makes for one trainable model.
class Engine {
 public:
  virtual ~Engine() = default;
  virtual torch::nn::Module& module() = 0;
  virtual void backward(const at::Tensor& loss) = 0;
  // Clips, steps the optimizer and scheduler, zeroes gradients; returns false when the step was skipped
  // (fp16 overflow).
  virtual bool step() = 0;
  virtual void save_checkpoint(const std::filesystem::path& dir) = 0;
  virtual void load_checkpoint(const std::filesystem::path& dir) = 0;
};

class Strategy {
 public:
  static constexpr const char* kind = "strategy";
  static constexpr int interface_version = 1;
  virtual ~Strategy() = default;

  virtual std::string describe() const = 0;  // e.g. "zero stage 2, offload optimizer"
};

}  // namespace dschat
