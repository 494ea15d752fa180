// The DDP / ZeRO engine (dschat/sdk/partitioned_engine.h). Units, flat slices and when each collective runs are
// described there; this file reads top to bottom: layout, backward (gradient reduction), step, forward (stage-3
// gathering), checkpoints.
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <c10/core/GradMode.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <unistd.h>

#include <cmath>
#include <deque>
#include <iostream>
#include <optional>
#include <unordered_map>

#include <fmt/format.h>

#include "dschat/sdk/atomic_file.h"
#include "dschat/sdk/copy_stream.h"
#include "dschat/sdk/cpu_adam.h"
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/loss_scale.h"
#include "dschat/sdk/optim.h"
#include "dschat/sdk/partitioned_engine.h"

#include "dschat/sdk/device.h"
#include "dschat/sdk/safetensors.h"

namespace dschat {

namespace fs = std::filesystem;

namespace {

// Runs after AccumulateGrad has added a backward pass's gradient into param.grad (the autograd engine sums every
// use of a parameter first, so it fires once per parameter per backward, tied weights included).
struct GradReadyHook : torch::autograd::PostAccumulateGradHook {
  explicit GradReadyHook(std::function<void()> on_ready) : on_ready(std::move(on_ready)) {}
  void operator()(const torch::autograd::Variable&) override { on_ready(); }
  std::function<void()> on_ready;
};

struct Member {
  size_t param;    // index into params_
  int64_t offset;  // in the unit's flat layout
  int64_t numel;
};

// Where the owned slice of a unit meets one parameter.
struct Segment {
  size_t param;
  int64_t shard_offset;  // in the owned slice
  int64_t param_offset;  // in the flattened parameter
  int64_t length;
};

struct Unit {
  std::string name;  // "outer" or "block.N"
  int block = -1;
  std::vector<Member> members;
  int64_t numel = 0, padded = 0, shard = 0, shard_begin = 0;
  std::vector<Segment> segments;
  at::Tensor master, exp_avg, exp_avg_sq;  // fp32 [shard], on the optimizer's device
  at::Tensor grad_shard;                   // stage >= 2: fp32 [shard], accumulated over micro-steps
  at::Tensor reduced_grads;                // stage <= 1: fp32 [padded], all-reduced at the boundary
  at::Tensor host_grad;                    // offload from a GPU: pinned fp32 [shard], the boundary's slice
  bool host_grad_ready = false;            // copied down (on the side stream) during the boundary's backward
  int ready = 0;
  bool reduced = false;
  // stage 3
  at::Tensor param_shard;  // model dtype [shard]; in host memory with offload_parameters
  at::Tensor gather_source;  // param_shard on the device while a gather reads it
  at::Tensor whole;        // model dtype [padded] while gathered
  PendingCollective gathering;
  bool assigned = false;   // the parameters are views into `whole`
  bool persistent = false; // stage 3 keeps it whole (parameters outside the LM: a value head)
  int pins = 0;            // gather_parameters() guards holding it whole
};

const char* dtype_label(at::ScalarType t) {
  return t == at::kFloat ? "fp32" : t == at::kBFloat16 ? "bf16" : t == at::kHalf ? "fp16" : "other";
}

class PartitionedEngine : public Engine {
 public:
  PartitionedEngine(std::shared_ptr<torch::nn::Module> module, std::shared_ptr<CausalLM> lm,
                    const OptimizerOptions& options, at::Device device, const PartitionedEngineOptions& partitioning,
                    std::string description)
      : module_(std::move(module)), lm_(std::move(lm)), options_(options), partitioning_(partitioning),
        device_(device), comm_(world()), description_(std::move(description)) {
    TORCH_CHECK(module_ && lm_, "make_engine: module and lm are required");
    TORCH_CHECK(partitioning_.zero_stage >= 0 && partitioning_.zero_stage <= 3, "zero stage must be 0..3, got ",
                partitioning_.zero_stage);
    TORCH_CHECK(options_.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1");
    stage_ = partitioning_.zero_stage;
    world_size_ = comm_.size();
    partitions_ = stage_ == 0 ? 1 : world_size_;
    owner_index_ = stage_ == 0 ? 0 : comm_.rank();
    optimizer_device_ = partitioning_.offload_optimizer ? at::Device(at::kCPU) : device_;
    TORCH_CHECK(!partitioning_.offload_parameters || stage_ == 3,
                "offload_parameters needs zero stage 3 (only then are the weights partitioned)");
    param_shard_device_ = partitioning_.offload_parameters ? at::Device(at::kCPU) : device_;
    copies_ = std::make_unique<CopyStream>(device_);
    module_->to(device_);
    params_ = trainable_parameters(*module_);
    TORCH_CHECK(!params_.empty(), "make_engine: no parameter of the model requires grad (nothing to train)");
    for (const auto& p : params_) {
      TORCH_CHECK(p.param.scalar_type() == at::kFloat || p.param.scalar_type() == at::kBFloat16 ||
                      p.param.scalar_type() == at::kHalf,
                  "parameter ", p.name, " is ", dtype_label(p.param.scalar_type()),
                  ": the ddp / zero strategies train fp32, bf16 or fp16 models");
      TORCH_CHECK(p.param.scalar_type() == params_.front().param.scalar_type(), "parameter ", p.name, " is ",
                  dtype_label(p.param.scalar_type()), ", ", params_.front().name, " ",
                  dtype_label(params_.front().param.scalar_type()), ": ddp / zero train one dtype per model");
      weights_dtype_ = p.param.scalar_type();
    }
    loss_scale_ = DynamicLossScale(weights_dtype_ == at::kHalf, options_);
    for (auto kind : {ParamGroupKind::decay, ParamGroupKind::lora, ParamGroupKind::no_decay}) {
      base_lr_[static_cast<int>(kind)] =
          kind == ParamGroupKind::lora ? options_.lora_learning_rate : options_.learning_rate;
      weight_decay_[static_cast<int>(kind)] = kind == ParamGroupKind::no_decay ? 0.0 : options_.weight_decay;
    }
    first_group_lr_ = options_.learning_rate;
    for (auto kind : {ParamGroupKind::decay, ParamGroupKind::lora, ParamGroupKind::no_decay}) {
      bool used = false;
      for (const auto& p : params_) used = used || p.group == kind;
      if (used) {
        first_group_lr_ = base_lr_[static_cast<int>(kind)];
        break;
      }
    }
    (void)lr_multiplier(options_.lr_scheduler, 0, 0, 1);  // unknown scheduler names fail here
    build_units();
    check_same_model_on_every_rank();
    register_hooks();
    if (stage_ == 3) {
      for (const auto& p : params_) shapes_.push_back(p.param.sizes().vec());
      for (auto& unit : units_) unit.assigned = true, release(unit);
    }
  }

  ~PartitionedEngine() override {
    for (auto& p : params_) torch::autograd::impl::set_post_acc_grad_hooks(p.param, nullptr);
  }

  torch::nn::Module& module() override { return *module_; }
  CausalLM& model() override { return *lm_; }
  at::Device device() const override { return device_; }
  std::string describe() const override {
    std::string what = stage_ == 0 ? "ddp" : fmt::format("zero stage {}", stage_);
    return fmt::format("{}: {} over {} ranks ({}), {} weights, fp32 master {}{}{}", description_, what, world_size_,
                       comm_.backend(), dtype_label(weights_dtype_), stage_ == 0 ? "copy" : "slices",
                       std::string(partitioning_.offload_optimizer ? ", optimizer offloaded to host (CPU Adam)" : "") +
                           (partitioning_.offload_parameters ? ", weight slices in host memory" : ""),
                       std::string(options_.gradient_checkpointing || stage_ == 3 ? ", blocks recomputed in backward"
                                                                                   : "") +
                           (loss_scale_.enabled() ? ", dynamic loss scale" : ""));
  }

  MemoryFootprint memory() const override {
    MemoryFootprint m;
    for (const auto& p : module_->parameters()) m.parameter_bytes += p.numel() * p.element_size();
    for (const auto& unit : units_) {
      if (stage_ == 3) m.parameter_bytes += unit.param_shard.numel() * unit.param_shard.element_size();
      if (stage_ >= 2) {
        m.gradient_bytes += unit.grad_shard.numel() * 4;
      } else {
        for (const auto& member : unit.members)
          m.gradient_bytes += member.numel * params_[member.param].param.element_size();
      }
      m.optimizer_bytes += (unit.master.numel() + unit.exp_avg.numel() + unit.exp_avg_sq.numel()) * 4;
    }
    return m;
  }

  // ---- backward: gradients reduced unit by unit as AccumulateGrad finishes them -----------------------------
  void backward(const at::Tensor& loss) override {
    TORCH_CHECK(loss.numel() == 1, "backward: the loss must be a scalar, got ", loss.sizes());
    const bool boundary = (micro_step_ + 1) % options_.gradient_accumulation_steps == 0;
    // Stages 0-1 reduce once per optimizer step (gradients accumulate locally, like DDP's no_sync); stages 2-3
    // reduce every micro-step so that no rank ever keeps more than its slice.
    reducing_ = stage_ >= 2 || boundary;
    boundary_backward_ = boundary;
    boundary_.reset();
    for (auto& unit : units_) unit.ready = 0, unit.reduced = false;
    (loss.to(at::kFloat) * (loss_scale_.scale() / static_cast<double>(options_.gradient_accumulation_steps)))
        .backward();
    if (reducing_) {
      // Units whose gradients the hooks did not see complete (the empty closing step of an epoch, parameters
      // unused by this loss): reduced now, in the same order on every rank.
      for (auto it = units_.rbegin(); it != units_.rend(); ++it)
        if (!it->reduced) reduce(*it);
      finish_reductions();
    }
    reducing_ = false;
    if (stage_ == 3)
      for (auto& unit : units_) release(unit);  // the outer unit, gathered for the whole forward + backward
    ++micro_step_;
  }

  bool gradients_overflowed() override {
    return loss_scale_.enabled() && at_boundary() && !std::isfinite(boundary_gradients().norm);
  }

  using Engine::step;
  StepResult step(const StepOptions& options) override {
    StepResult result;
    result.loss_scale = loss_scale_.scale();
    if (!at_boundary()) return result;
    result.boundary = true;
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> grads = std::move(boundary_gradients().slices);
    result.grad_norm = boundary_->norm;
    boundary_.reset();
    const bool finite = std::isfinite(result.grad_norm);  // every rank sees the same norm: all skip alike
    if (!finite || options.skip) {
      if (!finite && loss_scale_.enabled()) loss_scale_.overflowed();  // fp16: DeepSpeed halves the scale
      result.overflow = options.skip || loss_scale_.enabled();
      result.nonfinite = !result.overflow;  // NaN/inf gradients of an fp32 / bf16 model
      clear_gradients();
      return result;
    }
    if (options_.max_grad_norm > 0) {
      const double coef = options_.max_grad_norm / (result.grad_norm + 1e-6);  // torch's clip_grad_norm_
      if (coef < 1.0)
        for (auto& g : grads) g.mul_(coef);
    }
    const double mult =
        lr_multiplier(options_.lr_scheduler, global_step_, options_.num_warmup_steps, options_.total_steps);
    ++adam_step_;
    for (size_t u = 0; u < units_.size(); ++u) adamw(units_[u], grads[u], mult);
    result.lr = first_group_lr_ * mult;
    publish_weights();
    clear_gradients();
    ++global_step_;
    loss_scale_.applied();
    result.applied = true;
    return result;
  }

  double lr() const override {
    return first_group_lr_ *
           lr_multiplier(options_.lr_scheduler, global_step_, options_.num_warmup_steps, options_.total_steps);
  }
  int64_t global_step() const override { return global_step_; }
  void train(bool on) override { module_->train(on); }

  // ---- forward ----------------------------------------------------------------------------------------------
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
    const bool grad = at::GradMode::is_enabled();
    if (stage_ == 3) gather(units_[0]);  // embeddings, final norm, head: whole until backward is done
    AttentionInputs inputs = lm.prepare(mask, 0, ids.size(1), lm.dtype());
    at::Tensor hidden = lm.embed(ids, inputs);
    const bool training = module_->is_training() && grad;
    // ZeRO-3 always recomputes with grad on: a released block's weights cannot be saved for backward.
    const bool recompute = grad && (stage_ == 3 || (training && options_.gradient_checkpointing));
    for (size_t i = 0; i < lm.num_blocks(); ++i) {
      auto block = lm.block_ptr(i);
      Unit* unit = stage_ == 3 ? unit_of_block_[i] : nullptr;
      auto run = [this, block, inputs, unit, i](const at::Tensor& h) {
        if (!unit) return block->forward(h, inputs, nullptr);
        gather(*unit);
        // Forward (grad off) walks the blocks upwards, the recomputation in backward (grad on) downwards.
        const bool backward_pass = at::GradMode::is_enabled();
        if (partitioning_.prefetch) prefetch(backward_pass ? static_cast<int>(i) - 1 : static_cast<int>(i) + 1);
        at::Tensor out = block->forward(h, inputs, nullptr);
        if (!backward_pass) release(*unit);  // in backward the gradient hook releases it, once reduced
        return out;
      };
      hidden = recompute ? checkpointed(run, hidden) : run(hidden);
    }
    CausalLMOutput out;
    at::Tensor final = lm.final_hidden(hidden);
    if (options.return_hidden) out.hidden = final;
    if (options.return_logits)
      out.logits = lm.lm_logits(logits_from > 0 ? final.narrow(1, logits_from, final.size(1) - logits_from) : final);
    if (stage_ == 3 && !grad) release(units_[0]);
    return out;
  }

  std::shared_ptr<void> gather_parameters() override {
    if (stage_ != 3) return nullptr;
    for (auto& unit : units_) {
      ++unit.pins;
      start_gather(unit);
    }
    for (auto& unit : units_) gather(unit);
    return std::shared_ptr<void>(nullptr, [this](void*) {
      for (auto& unit : units_) {
        --unit.pins;
        release(unit);
      }
    });
  }

  // ---- checkpoints: one shard file per owner of a slice, a manifest, written atomically ---------------------
  void save_checkpoint(const fs::path& dir, const nlohmann::json& client_state) override {
    const fs::path parent = dir.parent_path().empty() ? fs::path(".") : dir.parent_path();
    const fs::path tmp = parent / (dir.filename().string() + ".tmp");  // one name every rank agrees on
    if (comm_.is_main()) {
      fs::create_directories(parent);
      fs::remove_all(tmp);
      fs::create_directories(tmp);
    }
    comm_.barrier();
    if (stage_ >= 1 || comm_.is_main()) {
      std::vector<std::pair<std::string, at::Tensor>> tensors;
      for (const auto& unit : units_) {
        tensors.emplace_back(unit.name + ".master", unit.master.cpu());
        tensors.emplace_back(unit.name + ".exp_avg", unit.exp_avg.cpu());
        tensors.emplace_back(unit.name + ".exp_avg_sq", unit.exp_avg_sq.cpu());
      }
      safetensors::require_finite(tmp, tensors);
      safetensors::save_file(tmp / fmt::format("shard-{}-of-{}.safetensors", owner_index_, partitions_), tensors);
    }
    safetensors::save_file(tmp / fmt::format("rng-rank{}.safetensors", comm_.rank()), {{"cpu", generator_state()}});
    comm_.barrier();
    if (comm_.is_main()) {
      // Frozen parameters are not in the slices; they are saved whole so that the checkpoint alone restores
      // the module.
      std::vector<std::pair<std::string, at::Tensor>> frozen;
      for (const auto& item : module_->named_parameters(true))
        if (!item.value().requires_grad()) frozen.emplace_back(item.key(), item.value().detach().cpu().contiguous());
      if (!frozen.empty()) safetensors::save_file(tmp / "frozen.safetensors", frozen);
      write_file_atomic(tmp / "manifest.json", manifest().dump(1) + "\n");
      nlohmann::json state = {{"format", "dschat-partitioned-1"}, {"global_step", global_step_},
                              {"micro_step", micro_step_}, {"adam_step", adam_step_},
                              {"world_size", world_size_}, {"zero_stage", stage_},
                              {"client_state", client_state}};
      loss_scale_.save_to(state);
      write_file_atomic(tmp / "engine.json", state.dump(2) + "\n");  // last: marks the folder complete
      if (fs::exists(dir)) {
        const fs::path old = parent / (dir.filename().string() + ".old");
        fs::remove_all(old);
        fs::rename(dir, old);
        commit_file(tmp, dir);
        fs::remove_all(old);
      } else {
        commit_file(tmp, dir);
      }
    }
    comm_.barrier();
  }

  nlohmann::json load_checkpoint(const fs::path& dir) override {
    nlohmann::json state = read_json_object(dir / "engine.json", "(not an engine checkpoint?)");
    TORCH_CHECK(state.value("format", "") == "dschat-partitioned-1", (dir / "engine.json").string(),
                ": not a ddp / zero checkpoint (format '", state.value("format", "single-process"), "')");
    nlohmann::json saved = read_json_object(dir / "manifest.json", "the checkpoint's manifest");
    const int saved_partitions = saved.at("partitions").get<int>();
    const auto& saved_units = saved.at("units");
    TORCH_CHECK(saved_units.size() == units_.size(), (dir / "manifest.json").string(), ": ", saved_units.size(),
                " units, this model has ", units_.size(), " (a different model?)");
    std::vector<std::shared_ptr<safetensors::File>> shards;
    for (int p = 0; p < saved_partitions; ++p)
      shards.push_back(safetensors::File::open(dir / fmt::format("shard-{}-of-{}.safetensors", p, saved_partitions)));
    at::NoGradGuard no_grad;
    for (size_t u = 0; u < units_.size(); ++u) {
      Unit& unit = units_[u];
      TORCH_CHECK(saved_units[u].at("numel").get<int64_t>() == unit.numel, (dir / "manifest.json").string(),
                  ": unit ", unit.name, " has ", saved_units[u].at("numel").get<int64_t>(), " elements, this model ",
                  unit.numel);
      // Any saved world size: put the whole unit back together, then cut this rank's slice.
      auto whole = [&](const char* what) {
        std::vector<at::Tensor> parts;
        for (auto& shard : shards) parts.push_back(shard->tensor(unit.name + "." + what));
        at::Tensor flat = at::cat(parts).narrow(0, 0, unit.numel);
        return at::cat({flat, at::zeros({unit.padded - unit.numel}, flat.options())});
      };
      at::Tensor master = whole("master");
      unit.master.copy_(master.narrow(0, unit.shard_begin, unit.shard));
      unit.exp_avg.copy_(whole("exp_avg").narrow(0, unit.shard_begin, unit.shard));
      unit.exp_avg_sq.copy_(whole("exp_avg_sq").narrow(0, unit.shard_begin, unit.shard));
      if (stage_ == 3) {
        unit.param_shard.copy_(unit.master);
      } else {
        for (const auto& member : unit.members)
          params_[member.param].param.view({-1}).copy_(master.narrow(0, member.offset, member.numel));
      }
    }
    if (fs::exists(dir / "frozen.safetensors")) {
      auto frozen = safetensors::File::open(dir / "frozen.safetensors");
      for (auto& item : module_->named_parameters(true))
        if (!item.value().requires_grad() && frozen->contains(item.key()))
          item.value().copy_(frozen->tensor(item.key()));
    }
    const fs::path rng = dir / fmt::format("rng-rank{}.safetensors", comm_.rank());
    if (fs::exists(rng)) set_generator_state(safetensors::File::open(rng)->tensor("cpu").clone());
    global_step_ = state.at("global_step").get<int64_t>();
    micro_step_ = state.at("micro_step").get<int64_t>();
    adam_step_ = state.at("adam_step").get<int64_t>();
    loss_scale_.restore_from(state);
    return state.value("client_state", nlohmann::json::object());
  }

 private:
  // ---- layout -----------------------------------------------------------------------------------------------
  void build_units() {
    std::unordered_map<const void*, size_t> index_of;
    for (size_t i = 0; i < params_.size(); ++i) index_of[params_[i].param.unsafeGetTensorImpl()] = i;
    // Parameters outside the LM (a value head: one row of hidden_size) form a last unit that ZeRO-3 keeps
    // whole, as DeepSpeed keeps parameters under stage3_param_persistence_threshold: callers use them after
    // forward returns, and they are too small to be worth a gather.
    std::unordered_map<const void*, bool> in_lm;
    for (const auto& p : lm_->parameters(true)) in_lm[p.unsafeGetTensorImpl()] = true;
    const int extra = static_cast<int>(1 + lm_->num_blocks());
    std::vector<int> unit_of(params_.size(), 0);
    for (size_t i = 0; i < params_.size(); ++i)
      if (!in_lm.count(params_[i].param.unsafeGetTensorImpl())) unit_of[i] = extra;
    units_.resize(2 + lm_->num_blocks());
    units_[0].name = "outer";
    units_[extra].name = "extra";
    units_[extra].persistent = true;
    for (size_t b = 0; b < lm_->num_blocks(); ++b) {
      units_[b + 1].name = fmt::format("block.{}", b);
      units_[b + 1].block = static_cast<int>(b);
      for (const auto& p : lm_->block_ptr(b)->parameters(true))
        if (auto it = index_of.find(p.unsafeGetTensorImpl()); it != index_of.end()) unit_of[it->second] = b + 1;
    }
    for (size_t i = 0; i < params_.size(); ++i) {
      Unit& unit = units_[unit_of[i]];
      unit.members.push_back({i, unit.numel, params_[i].param.numel()});
      unit.numel += params_[i].param.numel();
    }
    if (units_[extra].members.empty()) units_.pop_back();
    unit_index_.assign(params_.size(), 0);
    for (size_t u = 0; u < units_.size(); ++u)
      for (const auto& member : units_[u].members) unit_index_[member.param] = u;
    at::NoGradGuard no_grad;
    const auto fp32 = at::TensorOptions(optimizer_device_).dtype(at::kFloat);
    for (auto& unit : units_) {
      unit.padded = (unit.numel + world_size_ - 1) / world_size_ * world_size_;
      unit.shard = unit.padded / partitions_;
      unit.shard_begin = unit.shard * owner_index_;
      at::Tensor flat = at::zeros({unit.padded}, at::TensorOptions(device_).dtype(weights_dtype_));
      for (const auto& member : unit.members) {
        flat.narrow(0, member.offset, member.numel).copy_(params_[member.param].param.detach().reshape({-1}));
        const int64_t begin = std::max(member.offset, unit.shard_begin);
        const int64_t end = std::min(member.offset + member.numel, unit.shard_begin + unit.shard);
        if (begin < end)
          unit.segments.push_back({member.param, begin - unit.shard_begin, begin - member.offset, end - begin});
      }
      at::Tensor slice = flat.narrow(0, unit.shard_begin, unit.shard);
      unit.master = slice.to(fp32, /*non_blocking=*/false, /*copy=*/true);
      unit.exp_avg = at::zeros({unit.shard}, fp32);
      unit.exp_avg_sq = at::zeros({unit.shard}, fp32);
      if (optimizer_device_.is_cpu() && device_.is_cuda()) {  // offload: page-locked, so copies run at full speed
        unit.master = unit.master.pin_memory();
        unit.exp_avg = unit.exp_avg.pin_memory();
        unit.exp_avg_sq = unit.exp_avg_sq.pin_memory();
      }
      if (stage_ >= 2) unit.grad_shard = at::zeros({unit.shard}, at::TensorOptions(device_).dtype(at::kFloat));
      if (optimizer_device_.is_cpu() && device_.is_cuda()) unit.host_grad = at::empty({unit.shard}, fp32).pin_memory();
      if (stage_ == 3) unit.param_shard = slice.to(param_shard_device_, /*non_blocking=*/false, /*copy=*/true);
      if (stage_ == 3 && param_shard_device_.is_cpu() && device_.is_cuda()) unit.param_shard = unit.param_shard.pin_memory();
      if (unit.block >= 0) unit_of_block_.push_back(&unit);
    }
    if (stage_ == 3) TORCH_CHECK(unit_of_block_.size() == lm_->num_blocks(), "zero 3: block without parameters");
  }

  // Every collective relies on the same layout everywhere: a rank that built another model fails here, clearly.
  void check_same_model_on_every_rank() {
    if (world_size_ == 1) return;
    double mine = 0.0;
    for (const auto& unit : units_) mine = mine * 31.0 + static_cast<double>(unit.numel % 1000003);
    if (comm_.max(mine) != mine || -comm_.max(-mine) != mine)
      throw DistributedError(fmt::format("rank {}: the ranks built different models (parameter layouts differ)",
                                         comm_.rank()));
  }

  void register_hooks() {
    for (size_t i = 0; i < params_.size(); ++i) {
      torch::autograd::impl::set_post_acc_grad_hooks(
          params_[i].param, std::make_unique<GradReadyHook>([this, i] {
            if (!reducing_) return;
            Unit& unit = units_[unit_index_[i]];
            if (++unit.ready == static_cast<int>(unit.members.size())) reduce(unit);
          }));
    }
  }

  // ---- gradient reduction -----------------------------------------------------------------------------------
  struct InFlight {
    Unit* unit;
    at::Tensor flat, slice;
    PendingCollective done;
  };

  void reduce(Unit& unit) {
    unit.reduced = true;
    at::NoGradGuard no_grad;
    at::Tensor flat = at::zeros({unit.padded}, at::TensorOptions(device_).dtype(at::kFloat));
    for (const auto& member : unit.members) {
      at::Tensor& grad = params_[member.param].param.mutable_grad();
      if (grad.defined()) flat.narrow(0, member.offset, member.numel).copy_(grad.reshape({-1}));
      grad.reset();  // the flat buffer (stages 0-1) or the slice (2-3) holds it from here
    }
    if (stage_ == 3) release(unit);  // its gradients are out; the weights are not needed until the next gather
    InFlight job{&unit, flat, at::Tensor(), {}};
    if (stage_ <= 1) {
      job.done = comm_.all_reduce_async(job.flat);
    } else {
      job.slice = at::empty({unit.shard}, flat.options());
      job.done = comm_.reduce_scatter_async(job.slice, job.flat);
    }
    in_flight_.push_back(std::move(job));
    // Two buckets in flight overlap communication with backward without holding every bucket at once.
    while (in_flight_.size() > 2) finish_oldest();
  }

  void finish_oldest() {
    InFlight job = std::move(in_flight_.front());
    in_flight_.pop_front();
    job.done.wait();
    if (stage_ <= 1) {
      job.unit->reduced_grads = job.flat;
    } else {
      job.unit->grad_shard.add_(job.slice);
    }
    // Offload: the boundary's finished slice goes down on the side stream while backward works on earlier units.
    if (boundary_backward_ && job.unit->host_grad.defined()) {
      copies_->copy(job.unit->host_grad, device_gradient_slice(*job.unit));
      job.unit->host_grad_ready = true;
    }
  }
  void finish_reductions() {
    while (!in_flight_.empty()) finish_oldest();
  }

  // ---- the optimizer on this rank's slices -------------------------------------------------------------------
  bool at_boundary() const { return micro_step_ > 0 && micro_step_ % options_.gradient_accumulation_steps == 0; }

  // This rank's slice of every unit's gradient, averaged over ranks and unscaled, and the total norm (one
  // collective); made once per boundary, by gradients_overflowed() or step().
  // GPU -> host (offload): every slice's copy queued, one wait, then the host reads them. The squares are summed
  // where the slices are and read once: one synchronisation per step, not one per unit.
  struct BoundaryGradients {
    std::vector<at::Tensor> slices;
    double norm = 0.0;
  };
  BoundaryGradients& boundary_gradients() {
    if (boundary_) return *boundary_;
    BoundaryGradients b;
    const bool to_host = optimizer_device_ != device_;
    if (to_host) copies_->wait_for_host();  // the slices the backward already sent down
    for (auto& unit : units_) {
      if (to_host && unit.host_grad_ready) {
        b.slices.push_back(unit.host_grad);
        continue;
      }
      at::Tensor g = device_gradient_slice(unit);
      b.slices.push_back(to_host ? g.to(optimizer_device_, /*non_blocking=*/device_.is_cuda()) : g);
    }
    if (to_host) synchronize(device_);
    at::Tensor square_sum = at::zeros({}, at::TensorOptions(optimizer_device_).dtype(at::kDouble));
    const double divisor = static_cast<double>(world_size_) * loss_scale_.scale();
    for (auto& g : b.slices) {
      g.div_(divisor);
      square_sum += g.to(at::kDouble).pow(2).sum();
    }
    double squares = square_sum.item<double>();
    if (stage_ >= 1) squares = comm_.sum(squares);  // the slices partition the gradient
    b.norm = std::sqrt(squares);
    boundary_ = std::move(b);
    return *boundary_;
  }

  // This rank's slice of a unit's reduced gradient, on the device (zeros if nothing was reduced into it).
  at::Tensor device_gradient_slice(const Unit& unit) const {
    if (stage_ >= 2) return unit.grad_shard;
    if (unit.reduced_grads.defined()) return unit.reduced_grads.narrow(0, unit.shard_begin, unit.shard);
    return at::zeros({unit.shard}, at::TensorOptions(device_).dtype(at::kFloat));
  }

  void clear_gradients() {
    for (auto& unit : units_) {
      if (unit.grad_shard.defined()) unit.grad_shard.zero_();
      unit.reduced_grads.reset();
      unit.host_grad_ready = false;
    }
  }

  void adamw(Unit& unit, const at::Tensor& grad, double multiplier) {
    for (const auto& seg : unit.segments) {
      const int group = static_cast<int>(params_[seg.param].group);
      AdamWHyper hyper;
      hyper.lr = base_lr_[group] * multiplier;
      hyper.beta1 = options_.beta1;
      hyper.beta2 = options_.beta2;
      hyper.eps = options_.eps;
      hyper.weight_decay = weight_decay_[group];
      hyper.step = adam_step_;
      at::Tensor master = unit.master.narrow(0, seg.shard_offset, seg.length);
      at::Tensor exp_avg = unit.exp_avg.narrow(0, seg.shard_offset, seg.length);
      at::Tensor exp_avg_sq = unit.exp_avg_sq.narrow(0, seg.shard_offset, seg.length);
      at::Tensor g = grad.narrow(0, seg.shard_offset, seg.length);
      if (partitioning_.offload_optimizer) {
        cpu_adamw_step(master, g, exp_avg, exp_avg_sq, hyper);
      } else {
        at::Tensor step = at::full({}, static_cast<double>(adam_step_), master.options());
        at::_fused_adamw_({master}, {g}, {exp_avg}, {exp_avg_sq}, {}, {step}, hyper.lr, hyper.beta1, hyper.beta2,
                          hyper.weight_decay, hyper.eps, /*amsgrad=*/false, /*maximize=*/false);
      }
    }
  }

  // The updated slices become the weights every rank computes with.
  // Offload from a GPU: every updated fp32 slice goes up on the side stream (the host queues the next at once) and
  // the current stream waits for them all before it converts and gathers; otherwise the slice itself.
  std::vector<at::Tensor> updated_slices_on(at::Device where) {
    std::vector<at::Tensor> slices;
    for (auto& unit : units_) {
      if (unit.master.device() == where) {
        slices.push_back(unit.master);
        continue;
      }
      slices.push_back(at::empty({unit.shard}, at::TensorOptions(where).dtype(at::kFloat)));
      copies_->copy(slices.back(), unit.master);
    }
    copies_->wait_for_compute();
    return slices;
  }

  void publish_weights() {
    if (stage_ == 3) {
      auto slices = updated_slices_on(param_shard_device_);
      for (size_t u = 0; u < units_.size(); ++u) {
        Unit& unit = units_[u];
        unit.param_shard.copy_(slices[u]);
        if (unit.persistent) {  // refreshed whole right away
          unit.assigned = false;
          unit.whole.reset();
          gather(unit);
        }
      }
      return;
    }
    if (stage_ == 0) {
      for (auto& unit : units_)
        for (const auto& seg : unit.segments)
          params_[seg.param].param.view({-1}).narrow(0, seg.param_offset, seg.length).copy_(
              unit.master.narrow(0, seg.shard_offset, seg.length));
      return;
    }
    // Stages 1-2: every unit's slices all-gathered (all started, then consumed in order).
    std::vector<at::Tensor> sources, wholes;
    std::vector<PendingCollective> gathers;
    auto slices = updated_slices_on(device_);
    for (size_t u = 0; u < units_.size(); ++u) {
      sources.push_back(slices[u].to(weights_dtype_));
      wholes.push_back(at::empty({units_[u].padded}, sources.back().options()));
      gathers.push_back(comm_.all_gather_async(wholes.back(), sources.back()));
    }
    for (size_t u = 0; u < units_.size(); ++u) {
      gathers[u].wait();
      for (const auto& member : units_[u].members)
        params_[member.param].param.view({-1}).copy_(wholes[u].narrow(0, member.offset, member.numel));
    }
  }

  // ---- stage 3: gathering and releasing weights --------------------------------------------------------------
  void start_gather(Unit& unit) {
    if (unit.whole.defined() || unit.gathering.pending()) return;
    // A copy only when the shard lives in host memory; from page-locked memory it is queued, not waited for.
    unit.gather_source = unit.param_shard.to(device_, /*non_blocking=*/device_.is_cuda() && unit.param_shard.is_pinned());
    unit.whole = at::empty({unit.padded}, unit.gather_source.options());
    unit.gathering = comm_.all_gather_async(unit.whole, unit.gather_source);
  }
  void prefetch(int block) {
    if (block >= 0 && block < static_cast<int>(unit_of_block_.size())) start_gather(*unit_of_block_[block]);
  }
  void gather(Unit& unit) {
    if (stage_ != 3 || unit.assigned) return;
    start_gather(unit);
    unit.gathering.wait();
    for (const auto& member : unit.members) {
      auto& param = params_[member.param].param;
      param.set_data(unit.whole.narrow(0, member.offset, member.numel).view(shapes_.at(member.param)));
    }
    unit.assigned = true;
  }
  void release(Unit& unit) {
    if (stage_ != 3 || unit.pins > 0 || unit.persistent) return;
    unit.gathering.wait();  // a prefetch nobody used
    const auto options = unit.param_shard.options().device(device_);
    for (const auto& member : unit.members) params_[member.param].param.set_data(at::empty({0}, options));
    unit.whole.reset();
    unit.gather_source.reset();
    unit.assigned = false;
  }

  // ---- checkpoint helpers ------------------------------------------------------------------------------------
  nlohmann::json manifest() const {
    nlohmann::json units = nlohmann::json::array();
    for (const auto& unit : units_) {
      nlohmann::json members = nlohmann::json::array();
      for (const auto& member : unit.members) {
        const auto& shape = stage_ == 3 ? shapes_.at(member.param) : params_[member.param].param.sizes().vec();
        members.push_back({{"name", params_[member.param].name}, {"offset", member.offset},
                           {"numel", member.numel}, {"shape", shape},
                           {"group", to_string(params_[member.param].group)}});
      }
      units.push_back({{"name", unit.name}, {"numel", unit.numel}, {"padded", unit.padded}, {"params", members}});
    }
    return {{"partitions", partitions_}, {"world_size", world_size_}, {"zero_stage", stage_},
            {"weights_dtype", dtype_label(weights_dtype_)}, {"units", units}};
  }
  static at::Tensor generator_state() {
    auto gen = at::globalContext().defaultGenerator(at::kCPU);
    std::lock_guard<std::mutex> lock(gen.mutex());
    return gen.get_state();
  }
  static void set_generator_state(const at::Tensor& state) {
    auto gen = at::globalContext().defaultGenerator(at::kCPU);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state);
  }

  std::shared_ptr<torch::nn::Module> module_;
  std::shared_ptr<CausalLM> lm_;
  OptimizerOptions options_;
  PartitionedEngineOptions partitioning_;
  at::Device device_, optimizer_device_ = at::kCPU, param_shard_device_ = at::kCPU;
  Communicator& comm_;
  std::string description_;
  int stage_ = 0, world_size_ = 1, partitions_ = 1, owner_index_ = 0;
  at::ScalarType weights_dtype_ = at::kFloat;
  std::vector<NamedParam> params_;
  std::vector<std::vector<int64_t>> shapes_;  // stage 3: each parameter's shape while released
  std::vector<Unit> units_;
  std::vector<size_t> unit_index_;
  std::vector<Unit*> unit_of_block_;
  std::deque<InFlight> in_flight_;
  double base_lr_[3] = {0, 0, 0}, weight_decay_[3] = {0, 0, 0};
  double first_group_lr_ = 0.0;  // reported lr: the first non-empty group's, as the single engine does
  bool reducing_ = false;
  bool boundary_backward_ = false;  // the backward running now ends an accumulation
  std::unique_ptr<CopyStream> copies_;  // host <-> GPU transfers of offload, beside the compute
  int64_t global_step_ = 0, micro_step_ = 0, adam_step_ = 0;
  DynamicLossScale loss_scale_;
  std::optional<BoundaryGradients> boundary_;  // this boundary's gradients, once made
};

}  // namespace

std::unique_ptr<Engine> make_partitioned_engine(std::shared_ptr<torch::nn::Module> module,
                                                std::shared_ptr<CausalLM> lm, const OptimizerOptions& options,
                                                at::Device device, const PartitionedEngineOptions& partitioning,
                                                std::string strategy_description) {
  return std::make_unique<PartitionedEngine>(std::move(module), std::move(lm), options, device, partitioning,
                                             std::move(strategy_description));
}

}  // namespace dschat
