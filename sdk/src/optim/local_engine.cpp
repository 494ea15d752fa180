// The single-process engine (dschat/sdk/optim.h): AdamW in DeepSpeed-Chat's three groups, HF schedules,
// gradient accumulation, clipping, fp32 master weights for bf16/fp16 models, fp16 dynamic loss scaling,
// activation checkpointing over the model's blocks, and atomic checkpoints.
//
// The AdamW update is PyTorch's fused kernel (at::_fused_adamw_, the one torch.optim.AdamW(fused=True) runs): one
// vectorised pass over each parameter instead of the ~8 elementwise passes of LibTorch's torch::optim::AdamW,
// which is what a memory-bound CPU step spends its time on. DeepSpeed likewise uses fused Adam kernels. The
// state is kept per parameter name, so checkpoints are keyed by name, not by position.
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/stack.h>
#include <c10/util/irange.h>
#include <nlohmann/json.hpp>
#include <torch/nn/utils/clip_grad.h>
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <unistd.h>

#include <cmath>

#include <fmt/format.h>

#include "dschat/sdk/atomic_file.h"
#include "dschat/sdk/loss_scale.h"
#include "dschat/sdk/optim.h"
#include "dschat/sdk/safetensors.h"

namespace dschat {

namespace fs = std::filesystem;

namespace {

const char* dtype_label(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "fp32";
    case at::kBFloat16: return "bf16";
    case at::kHalf: return "fp16";
    default: return "other";
  }
}

class LocalEngine : public Engine {
 public:
  LocalEngine(std::shared_ptr<torch::nn::Module> module, std::shared_ptr<CausalLM> lm, const OptimizerOptions& options,
              at::Device device, std::string description, GradientSync sync)
      : module_(std::move(module)), lm_(std::move(lm)), options_(options), device_(device),
        description_(std::move(description)), sync_(std::move(sync)) {
    TORCH_CHECK(module_ && lm_, "make_engine: module and lm are required");
    TORCH_CHECK(options_.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1");
    module_->to(device_);
    params_ = trainable_parameters(*module_);
    TORCH_CHECK(!params_.empty(), "make_engine: no parameter of the model requires grad (nothing to train)");
    for (const auto& p : params_) {
      TORCH_CHECK(at::isFloatingType(p.param.scalar_type()), "parameter ", p.name, " is not floating point");
      if (p.param.scalar_type() != at::kFloat) mixed_ = true;
      if (p.param.scalar_type() == at::kHalf) fp16_ = true;
      weights_dtype_ = p.param.scalar_type();
    }
    loss_scale_ = DynamicLossScale(fp16_, options_);
    for (const auto& p : params_) {
      masters_.push_back(mixed_ ? p.param.detach().to(at::kFloat).clone() : p.param);
    }
    for (auto kind : {ParamGroupKind::decay, ParamGroupKind::lora, ParamGroupKind::no_decay}) {
      Group group;
      for (size_t i = 0; i < params_.size(); ++i)
        if (params_[i].group == kind) group.members.push_back(i);
      if (group.members.empty()) continue;  // DeepSpeed-Chat drops empty groups
      group.base_lr = kind == ParamGroupKind::lora ? options_.lora_learning_rate : options_.learning_rate;
      group.weight_decay = kind == ParamGroupKind::no_decay ? 0.0 : options_.weight_decay;
      groups_.push_back(std::move(group));
    }
    exp_avg_.resize(params_.size());
    exp_avg_sq_.resize(params_.size());
    steps_.resize(params_.size());
    (void)lr_multiplier(options_.lr_scheduler, 0, 0, 1);  // unknown scheduler names fail here, not at step 1
  }

  torch::nn::Module& module() override { return *module_; }
  CausalLM& model() override { return *lm_; }
  at::Device device() const override { return device_; }
  std::string describe() const override {
    std::string precision = mixed_ ? fmt::format("{} weights + fp32 master weights", dtype_label(weights_dtype_))
                                   : std::string("fp32");
    if (fp16_) precision += ", dynamic loss scale";
    return fmt::format("{}, {}{}", description_, precision,
                       options_.gradient_checkpointing ? ", activation checkpointing" : "");
  }

  using Engine::forward;
  CausalLMOutput forward(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                         const ForwardOptions& options) override {
    const int64_t logits_from = options.logits_from;
    TORCH_CHECK(logits_from >= 0 && logits_from < input_ids.size(-1), "logits_from ", logits_from,
                " is outside the ", input_ids.size(-1), " positions");
    TORCH_CHECK(input_ids.dim() == 2, "input_ids must be [batch, tokens], got ", input_ids.sizes());
    at::Tensor ids = input_ids.to(device_);
    at::Tensor mask = attention_mask.defined() ? attention_mask.to(device_)
                                               : at::ones(ids.sizes(), ids.options().dtype(at::kLong));
    auto& lm = *lm_;
    AttentionInputs inputs = lm.prepare(mask, 0, ids.size(1), lm.dtype());
    at::Tensor hidden = lm.embed(ids, inputs);
    const bool recompute = options_.gradient_checkpointing && module_->is_training() && at::GradMode::is_enabled();
    for (size_t i = 0; i < lm.num_blocks(); ++i) {
      auto block = lm.block_ptr(i);
      if (recompute) {
        hidden = checkpointed([block, inputs](const at::Tensor& h) { return block->forward(h, inputs, nullptr); },
                              hidden);
      } else {
        hidden = block->forward(hidden, inputs, nullptr);
      }
    }
    CausalLMOutput out;
    at::Tensor final = lm.final_hidden(hidden);
    if (options.return_hidden) out.hidden = final;
    if (options.return_logits)
      out.logits = lm.lm_logits(logits_from > 0 ? final.narrow(1, logits_from, final.size(1) - logits_from) : final);
    return out;
  }

  void backward(const at::Tensor& loss) override {
    TORCH_CHECK(loss.numel() == 1, "backward: the loss must be a scalar, got ", loss.sizes());
    const double scale = loss_scale_.scale() / static_cast<double>(options_.gradient_accumulation_steps);
    (loss.to(at::kFloat) * scale).backward();
    ++micro_step_;
    overflow_known_ = false;
  }

  bool gradients_overflowed() override {
    if (!loss_scale_.enabled() || !at_boundary()) return false;
    if (!overflow_known_) {  // one reading of the device for all the gradients
      std::vector<at::Tensor> finite;
      for (const auto& p : params_)
        if (p.param.grad().defined()) finite.push_back(at::isfinite(p.param.grad()).all());
      overflow_ = !finite.empty() && !at::stack(finite).all().item<bool>();
      overflow_known_ = true;
    }
    return overflow_;
  }

  using Engine::step;
  StepResult step(const StepOptions& options) override {
    StepResult result;
    result.loss_scale = loss_scale_.scale();
    if (!at_boundary()) return result;
    result.boundary = true;
    at::NoGradGuard no_grad;
    const bool overflowed = gradients_overflowed();
    if (overflowed || options.skip) {  // DeepSpeed: skip the step (and the scheduler); halve the scale if ours
      if (overflowed) loss_scale_.overflowed();
      zero_grad();
      result.overflow = true;
      return result;
    }

    std::vector<at::Tensor> with_grad;
    std::vector<std::string> names;
    for (size_t i = 0; i < params_.size(); ++i) {
      const at::Tensor& g = params_[i].param.grad();
      if (!g.defined()) continue;
      if (mixed_) masters_[i].mutable_grad() = g.to(at::kFloat);
      if (loss_scale_.scale() != 1.0) masters_[i].mutable_grad().div_(loss_scale_.scale());
      with_grad.push_back(masters_[i]);
      names.push_back(params_[i].name);
    }
    if (sync_.average || sync_.squared_norm) {
      std::vector<at::Tensor> grads;
      for (const auto& m : with_grad) grads.push_back(m.grad());
      if (sync_.average) sync_.average(grads);
      if (sync_.squared_norm) {  // clip_grad_norm_'s factor, from the whole model's norm
        result.grad_norm = std::sqrt(sync_.squared_norm(names, grads));
        const double factor = options_.max_grad_norm / (result.grad_norm + 1e-6);
        if (options_.max_grad_norm > 0 && factor < 1.0)
          for (auto& g : grads) g.mul_(factor);
      }
    }
    if (!with_grad.empty() && !sync_.squared_norm) {
      if (options_.max_grad_norm > 0) {
        result.grad_norm = torch::nn::utils::clip_grad_norm_(with_grad, options_.max_grad_norm);
      } else {
        double squares = 0.0;
        for (const auto& m : with_grad) squares += m.grad().to(at::kDouble).pow(2).sum().item<double>();
        result.grad_norm = std::sqrt(squares);
      }
    }
    if (!std::isfinite(result.grad_norm)) {  // NaN/inf gradients: the weights must not see them
      zero_grad();
      result.nonfinite = true;
      return result;
    }
    const double mult = lr_multiplier(options_.lr_scheduler, global_step_, options_.num_warmup_steps,
                                      options_.total_steps);
    for (const auto& group : groups_) adamw(group, group.base_lr * mult);
    result.lr = groups_[0].base_lr * mult;
    if (mixed_) {
      for (size_t i = 0; i < params_.size(); ++i) params_[i].param.copy_(masters_[i]);
    }
    zero_grad();
    ++global_step_;
    loss_scale_.applied();
    result.applied = true;
    return result;
  }

  MemoryFootprint memory() const override {
    MemoryFootprint m;
    for (const auto& p : module_->parameters()) m.parameter_bytes += p.numel() * p.element_size();
    for (size_t i = 0; i < params_.size(); ++i) {
      m.gradient_bytes += params_[i].param.numel() * params_[i].param.element_size();
      // Adam's moments (created at the first step) and, for bf16/fp16 models, the fp32 master copy.
      m.optimizer_bytes += params_[i].param.numel() * 4 * (mixed_ ? 3 : 2);
    }
    return m;
  }

  double lr() const override {
    return groups_[0].base_lr *
           lr_multiplier(options_.lr_scheduler, global_step_, options_.num_warmup_steps, options_.total_steps);
  }
  int64_t global_step() const override { return global_step_; }
  void train(bool on) override { module_->train(on); }

  void save_checkpoint(const fs::path& dir, const nlohmann::json& client_state) override {
    const fs::path parent = dir.parent_path().empty() ? fs::path(".") : dir.parent_path();
    fs::create_directories(parent);
    const fs::path tmp = parent / fmt::format("{}.tmp-{}", dir.filename().string(), ::getpid());
    fs::remove_all(tmp);
    fs::create_directories(tmp);

    std::vector<std::pair<std::string, at::Tensor>> weights;
    for (const auto& item : module_->named_parameters(/*recurse=*/true))
      weights.emplace_back(item.key(), item.value().detach().to(at::kCPU).contiguous());
    safetensors::require_finite(tmp, weights);
    safetensors::save_file(tmp / "model.safetensors", weights);
    if (mixed_) {
      std::vector<std::pair<std::string, at::Tensor>> masters;
      for (size_t i = 0; i < params_.size(); ++i) masters.emplace_back(params_[i].name, masters_[i].detach().cpu());
      safetensors::require_finite(tmp, masters);
      safetensors::save_file(tmp / "master.safetensors", masters);
    }
    std::vector<std::pair<std::string, at::Tensor>> optimizer;
    for (size_t i = 0; i < params_.size(); ++i) {
      if (!exp_avg_[i].defined()) continue;  // no step taken with a gradient for it yet
      optimizer.emplace_back(params_[i].name + ".exp_avg", exp_avg_[i].cpu());
      optimizer.emplace_back(params_[i].name + ".exp_avg_sq", exp_avg_sq_[i].cpu());
      optimizer.emplace_back(params_[i].name + ".step", steps_[i].cpu().reshape({1}));
    }
    safetensors::require_finite(tmp, optimizer);
    safetensors::save_file(tmp / "optimizer.safetensors", optimizer);
    std::vector<std::pair<std::string, at::Tensor>> rng{{"cpu", generator_state(at::kCPU)}};
    if (!device_.is_cpu()) rng.emplace_back(device_.str(), generator_state(device_));
    safetensors::save_file(tmp / "rng.safetensors", rng);
    nlohmann::json state = {{"global_step", global_step_},
                            {"micro_step", micro_step_},
                            {"lr_scheduler", options_.lr_scheduler},
                            {"total_steps", options_.total_steps},
                            {"client_state", client_state}};
    loss_scale_.save_to(state);
    write_file_atomic(tmp / "engine.json", state.dump(2) + "\n");

    // Swap the finished folder into place; a crash before this leaves only the *.tmp-* folder.
    if (fs::exists(dir)) {
      const fs::path old = parent / fmt::format("{}.old-{}", dir.filename().string(), ::getpid());
      fs::remove_all(old);
      fs::rename(dir, old);
      commit_file(tmp, dir);
      fs::remove_all(old);
    } else {
      commit_file(tmp, dir);
    }
  }

  nlohmann::json load_checkpoint(const fs::path& dir) override {
    nlohmann::json state = read_json_object(dir / "engine.json", "(not an engine checkpoint?)");

    at::NoGradGuard no_grad;
    auto weights = safetensors::File::open(dir / "model.safetensors");
    for (auto& item : module_->named_parameters(/*recurse=*/true)) {
      if (!weights->contains(item.key()))
        throw std::runtime_error((dir / "model.safetensors").string() + ": missing tensor '" + item.key() + "'");
      at::Tensor value = weights->tensor(item.key());
      if (value.sizes() != item.value().sizes())
        throw std::runtime_error((dir / "model.safetensors").string() + ": tensor '" + item.key() + "' has shape " +
                                 c10::str(value.sizes()) + ", the model " + c10::str(item.value().sizes()));
      item.value().copy_(value);
    }
    if (mixed_) {
      auto masters = safetensors::File::open(dir / "master.safetensors");
      for (size_t i = 0; i < params_.size(); ++i) masters_[i].copy_(masters->tensor(params_[i].name));
    }
    auto optimizer = safetensors::File::open(dir / "optimizer.safetensors");
    for (size_t i = 0; i < params_.size(); ++i) {
      const std::string& name = params_[i].name;
      if (!optimizer->contains(name + ".exp_avg")) {
        exp_avg_[i] = exp_avg_sq_[i] = steps_[i] = at::Tensor();
        continue;
      }
      at::Tensor m = optimizer->tensor(name + ".exp_avg");
      TORCH_CHECK(m.sizes() == masters_[i].sizes(), (dir / "optimizer.safetensors").string(), ": state of '", name,
                  "' has shape ", m.sizes(), ", the parameter ", masters_[i].sizes());
      exp_avg_[i] = m.to(masters_[i].device(), at::kFloat, false, /*copy=*/true);
      exp_avg_sq_[i] = optimizer->tensor(name + ".exp_avg_sq").to(masters_[i].device(), at::kFloat, false, true);
      steps_[i] = optimizer->tensor(name + ".step").to(at::kFloat).reshape({}).clone();
    }
    auto rng = safetensors::File::open(dir / "rng.safetensors");
    set_generator_state(at::kCPU, rng->tensor("cpu").clone());
    if (!device_.is_cpu() && rng->contains(device_.str()))
      set_generator_state(device_, rng->tensor(device_.str()).clone());
    global_step_ = state.at("global_step").get<int64_t>();
    micro_step_ = state.at("micro_step").get<int64_t>();
    loss_scale_.restore_from(state);
    return state.value("client_state", nlohmann::json::object());
  }

 private:
  static at::Tensor generator_state(at::Device device) {
    auto gen = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    return gen.get_state();
  }
  static void set_generator_state(at::Device device, const at::Tensor& state) {
    auto gen = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state);
  }

  bool at_boundary() const { return micro_step_ > 0 && micro_step_ % options_.gradient_accumulation_steps == 0; }

  void zero_grad() {
    overflow_known_ = false;  // the next boundary's gradients are checked afresh
    for (size_t i = 0; i < params_.size(); ++i) {
      params_[i].param.mutable_grad().reset();
      if (mixed_) masters_[i].mutable_grad().reset();
    }
  }

  std::shared_ptr<torch::nn::Module> module_;
  std::shared_ptr<CausalLM> lm_;
  OptimizerOptions options_;
  at::Device device_;
  std::string description_;
  GradientSync sync_;
  std::vector<NamedParam> params_;
  std::vector<at::Tensor> masters_;  // fp32 copies for bf16/fp16 models, else the parameters themselves
  struct Group {
    std::vector<size_t> members;  // indices into params_
    double base_lr = 0.0, weight_decay = 0.0;
  };
  // One AdamW update of a group's parameters that have gradients (state created on first use, as torch.optim).
  void adamw(const Group& group, double lr) {
    std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
    for (size_t i : group.members) {
      if (!masters_[i].grad().defined()) continue;
      if (!exp_avg_[i].defined()) {
        exp_avg_[i] = at::zeros_like(masters_[i], at::MemoryFormat::Preserve);
        exp_avg_sq_[i] = at::zeros_like(masters_[i], at::MemoryFormat::Preserve);
        steps_[i] = at::zeros({}, masters_[i].options().dtype(at::kFloat));
      }
      params.push_back(masters_[i]);
      grads.push_back(masters_[i].grad());
      exp_avgs.push_back(exp_avg_[i]);
      exp_avg_sqs.push_back(exp_avg_sq_[i]);
      steps.push_back(steps_[i]);
    }
    if (params.empty()) return;
    at::_foreach_add_(steps, 1);  // the fused kernel reads the incremented step (torch.optim does the same)
    at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, {}, steps, lr, options_.beta1, options_.beta2,
                      group.weight_decay, options_.eps, /*amsgrad=*/false, /*maximize=*/false);
  }

  std::vector<Group> groups_;
  std::vector<at::Tensor> exp_avg_, exp_avg_sq_, steps_;  // per parameter; undefined until its first update
  bool mixed_ = false, fp16_ = false;
  at::ScalarType weights_dtype_ = at::kFloat;
  int64_t global_step_ = 0, micro_step_ = 0;
  DynamicLossScale loss_scale_;
  bool overflow_known_ = false, overflow_ = false;  // gradients_overflowed() for the current boundary
};

}  // namespace

std::unique_ptr<Engine> make_local_engine(std::shared_ptr<torch::nn::Module> module, std::shared_ptr<CausalLM> lm,
                                          const OptimizerOptions& options, at::Device device,
                                          std::string strategy_description, GradientSync sync) {
  return std::make_unique<LocalEngine>(std::move(module), std::move(lm), options, device,
                                       std::move(strategy_description), std::move(sync));
}

}  // namespace dschat
