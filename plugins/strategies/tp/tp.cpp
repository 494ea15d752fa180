// Strategy "tp": Megatron tensor parallelism for training, alone or combined with data parallelism.
//
// The run's ranks form a dp x tp mesh (dschat/sdk/distributed.h: make_mesh, TP ranks adjacent). Each TP group
// holds one replica of every trained model: a trainable shard (dschat/sdk/tensor_parallel.h) with
// column-parallel q/k/v/fc1/gate/up, row-parallel out_proj/fc2/down and a vocab-parallel untied head, whose
// differentiable collectives give every rank its slice's gradient and the whole gradient of the replicated
// parameters. The optimizer is the SDK's single-process AdamW over the shard (so its states are split too),
// told two things: the clipping norm is the whole model's (split parameters' squares summed over the TP group,
// replicated ones counted once), and with several replicas the gradients are averaged over the DP group. The
// stage reads its batches per replica (Strategy::tensor_parallel_size, data_parallel()).
//
// The model the algorithm holds keeps no weights of its own while training (its storage is released once the
// shard is cut): Engine::gather_parameters all-gathers the trained slices back into it for rollouts, hooks and
// export, and frees them when the guard goes. Checkpoints hold one folder per TP rank (tp-rank-T), written by
// the first replica; they load into the same tp_size.
#include <algorithm>
#include <stdexcept>
#include <unordered_set>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dschat/sdk/atomic_file.h"
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/optim.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/strategy.h"
#include "dschat/sdk/tensor_parallel.h"

namespace {

namespace fs = std::filesystem;

// The trained module with the shard in the causal LM's place: the same child names, so parameter names (and
// checkpoints) read as the whole module's; other children (a value head) are shared with the algorithm's module.
std::shared_ptr<torch::nn::Module> module_over_shard(torch::nn::Module& module, const dschat::CausalLM& lm,
                                                     std::shared_ptr<dschat::CausalLM> shard) {
  if (&module == &lm) return shard;
  auto view = std::make_shared<torch::nn::Module>("TensorParallelModule");
  bool found = false;
  for (const auto& child : module.named_children()) {
    const bool is_lm = child.value().get() == &lm;
    found = found || is_lm;
    view->register_module(child.key(), is_lm ? std::static_pointer_cast<torch::nn::Module>(shard) : child.value());
  }
  TORCH_CHECK(found, "strategy 'tp': the causal LM is not a direct child of the trained module");
  TORCH_CHECK(module.named_parameters(/*recurse=*/false).is_empty(),
              "strategy 'tp': the trained module has parameters of its own outside its children");
  return view;
}

class TensorParallelEngine : public dschat::Engine {
 public:
  TensorParallelEngine(std::shared_ptr<torch::nn::Module> module, std::shared_ptr<dschat::CausalLM> lm,
                       const dschat::OptimizerOptions& options, at::Device device, int tp_size)
      : module_(std::move(module)), lm_(std::move(lm)) {
    auto family = lm_->family();
    TORCH_CHECK(family, "strategy 'tp' needs the model's family (set by the host when it loads a stage's model; "
                        "call CausalLM::set_family for a model built by hand)");
    family_ = family;
    auto& world = dschat::world();
    mesh_ = dschat::make_mesh(world, world.size() / tp_size, tp_size);
    module_->to(device);
    // A rank's fp16 overflow can be its slices' alone, and the local engine would halve only that rank's scale.
    TORCH_CHECK(lm_->dtype() != at::kHalf, "strategy 'tp' trains fp32 or bf16 models; fp16's dynamic loss scale "
                                          "is not kept in step across the ranks yet (set dtype = \"bf16\")");
    shard_ = dschat::make_tensor_parallel_shard(*family_, *lm_, *mesh_.tp, {/*trainable=*/true});
    auto view = module_over_shard(*module_, *lm_, shard_);
    const std::string prefix = view.get() == shard_.get() ? "" : lm_prefix();  // the names the engine sees
    const auto whole = lm_->named_parameters();
    for (const auto& item : shard_->named_parameters()) {
      if (item.value().numel() != whole[item.key()].numel()) split_.insert(prefix + item.key());
    }
    dschat::GradientSync sync;
    sync.squared_norm = [this](const std::vector<std::string>& names, const std::vector<at::Tensor>& grads) {
      return squared_norm(names, grads);
    };
    if (mesh_.dp->size() > 1) sync.average = [this](const std::vector<at::Tensor>& grads) { average(grads); };
    inner_ = dschat::make_local_engine(view, shard_, options, device,
                                       fmt::format("tensor parallel {} x data parallel {}, {}", tp_size,
                                                   mesh_.dp->size(), device.str()),
                                       std::move(sync));
    release_full_weights();
  }

  torch::nn::Module& module() override { return *module_; }
  dschat::CausalLM& model() override { return *lm_; }
  at::Device device() const override { return inner_->device(); }
  std::string describe() const override { return inner_->describe(); }

  using Engine::forward;
  dschat::CausalLMOutput forward(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                 const dschat::ForwardOptions& options) override {
    return inner_->forward(input_ids, attention_mask, options);
  }
  void backward(const at::Tensor& loss) override { inner_->backward(loss); }
  using Engine::step;
  dschat::StepResult step(const dschat::StepOptions& options) override { return inner_->step(options); }
  double lr() const override { return inner_->lr(); }
  int64_t global_step() const override { return inner_->global_step(); }
  void train(bool on) override {
    inner_->train(on);
    module_->train(on);
  }
  dschat::MemoryFootprint memory() const override { return inner_->memory(); }

  // The whole model's weights on every rank while the guard lives (collective over the TP group).
  std::shared_ptr<void> gather_parameters() override {
    if (gathered_++ == 0) {
      at::NoGradGuard no_grad;
      for (auto& [param, shape] : released_) param.set_data(at::empty(shape, param.options()));
      dschat::gather_tensor_parallel_shard(*shard_, *family_, *lm_, *mesh_.tp);
    }
    return std::shared_ptr<void>(nullptr, [this](void*) {
      if (--gathered_ == 0) release_full_weights();
    });
  }

  // dir/tp-rank-T: this TP rank's engine checkpoint (the first replica's); dir/engine.json, the marker, last.
  void save_checkpoint(const fs::path& dir, const nlohmann::json& client_state) override {
    auto& world = dschat::world();
    const fs::path parent = dir.parent_path().empty() ? fs::path(".") : dir.parent_path();
    const fs::path tmp = parent / (dir.filename().string() + ".tmp-tp");  // one name for every rank
    if (world.is_main()) {
      fs::remove_all(tmp);
      fs::create_directories(tmp);
    }
    world.barrier();
    if (mesh_.dp->rank() == 0) inner_->save_checkpoint(tmp / rank_folder(), client_state);
    world.barrier();
    if (world.is_main()) {
      nlohmann::json state = {{"tp_size", mesh_.tp->size()}, {"global_step", global_step()},
                              {"client_state", client_state}};
      dschat::write_file_atomic(tmp / "engine.json", state.dump(2) + "\n");
      const fs::path old = parent / (dir.filename().string() + ".old-tp");
      fs::remove_all(old);
      if (fs::exists(dir)) fs::rename(dir, old);
      dschat::commit_file(tmp, dir);
      fs::remove_all(old);
    }
    world.barrier();
  }

  nlohmann::json load_checkpoint(const fs::path& dir) override {
    auto state = dschat::read_json_object(dir / "engine.json", "(not an engine checkpoint?)");
    const int64_t saved = state.value("tp_size", int64_t{0});
    TORCH_CHECK(saved == mesh_.tp->size(), dir.string(), " was saved by tensor parallelism over ", saved,
                " ranks; this run has tp_size ", mesh_.tp->size(), " (resume with the same tp_size)");
    return inner_->load_checkpoint(dir / rank_folder());
  }

 private:
  std::string rank_folder() const { return fmt::format("tp-rank-{}", mesh_.tp->rank()); }

  std::string lm_prefix() const {
    for (const auto& child : module_->named_children()) {
      if (child.value().get() == lm_.get()) return child.key() + ".";
    }
    return "";
  }

  // Split parameters' squares summed over the TP group (each rank holds a slice); replicated ones are whole on
  // every rank and counted once.
  double squared_norm(const std::vector<std::string>& names, const std::vector<at::Tensor>& grads) {
    at::Tensor squares = at::zeros({2}, at::TensorOptions().dtype(at::kDouble));
    for (size_t i = 0; i < grads.size(); ++i) {
      const bool split = split_.count(names[i]) != 0;
      squares[split ? 0 : 1] += grads[i].to(at::kDouble).pow(2).sum().cpu();
    }
    at::Tensor split_squares = squares.narrow(0, 0, 1).contiguous();
    mesh_.tp->all_reduce(split_squares);
    return split_squares.item<double>() + squares[1].item<double>();
  }

  // One flat all-reduce over the data-parallel group, divided by its size.
  void average(const std::vector<at::Tensor>& grads) {
    std::vector<at::Tensor> flat;
    for (const auto& g : grads) flat.push_back(g.reshape({-1}));
    at::Tensor buffer = at::cat(flat);
    mesh_.dp->all_reduce(buffer);
    buffer.div_(mesh_.dp->size());
    int64_t offset = 0;
    for (const auto& g : grads) {
      g.view({-1}).copy_(buffer.narrow(0, offset, g.numel()));
      offset += g.numel();
    }
  }

  // The algorithm's model keeps its parameters' shapes but no storage; gather_parameters fills them.
  void release_full_weights() {
    at::NoGradGuard no_grad;
    if (released_.empty()) {
      for (auto& param : lm_->parameters()) released_.emplace_back(param, param.sizes().vec());
    }
    for (auto& [param, shape] : released_) param.set_data(at::empty({0}, param.options()));
  }

  std::shared_ptr<torch::nn::Module> module_;
  std::shared_ptr<dschat::CausalLM> lm_;
  std::shared_ptr<const dschat::ModelFamily> family_;
  dschat::Mesh mesh_;
  std::shared_ptr<dschat::CausalLM> shard_;
  std::unordered_set<std::string> split_;  // the trained parameters (by the engine's names) that hold a slice
  std::unique_ptr<dschat::Engine> inner_;
  std::vector<std::pair<at::Tensor, std::vector<int64_t>>> released_;
  int gathered_ = 0;
};

class TensorParallelStrategy : public dschat::Strategy {
 public:
  explicit TensorParallelStrategy(const dschat::ConfigTable& options) {
    device_ = dschat::read_device_option(options);
    // The world the launcher started (its variables), not the process group: the pipeline is validated before
    // the group exists, so `torchrun ... dschat validate` checks the layout against the real rank count.
    int64_t world = dschat::world().size();
    try {
      world = std::max<int64_t>(world, dschat::detect_launch_environment().world_size);
    } catch (const std::invalid_argument&) {  // inconsistent variables: the rendezvous reports them
    }
    tp_size_ = options.get_int("tp_size", world, 1);
    if (world % tp_size_ != 0) {
      options.fail("tp_size", fmt::format("must divide the {} ranks the launcher started into tensor-parallel "
                                          "groups (the rest is data parallelism)", world));
    }
  }

  std::string describe() const override {
    return fmt::format("tensor parallel over {} rank{} per replica, device {}", tp_size_, tp_size_ == 1 ? "" : "s",
                       device_);
  }

  int tensor_parallel_size() const override { return static_cast<int>(tp_size_); }

  // Weights, gradients and Adam states are split over the TP group, but for the replicated norms, embeddings and
  // biases; the planner counts the whole shares.
  dschat::StatePlacement state_placement(int64_t) const override {
    dschat::StatePlacement p;
    p.parameter_shards = p.gradient_shards = p.optimizer_shards = tp_size_;
    return p;
  }

  std::unique_ptr<dschat::Engine> make_engine(std::shared_ptr<torch::nn::Module> module,
                                              std::shared_ptr<dschat::CausalLM> lm,
                                              const dschat::OptimizerOptions& options) override {
    TORCH_CHECK(dschat::world().size() % tp_size_ == 0, "strategy 'tp': tp_size ", tp_size_, " does not divide the ",
                dschat::world().size(), " ranks");
    return std::make_unique<TensorParallelEngine>(std::move(module), std::move(lm), options,
                                                  dschat::place_on(device_), static_cast<int>(tp_size_));
  }

 private:
  std::string device_;
  int64_t tp_size_ = 1;
};

}  // namespace

DSCHAT_PLUGIN("tp", "0.2.0", "Megatron tensor parallelism for training, combined with data parallelism") {
  registrar.add<dschat::Strategy>("tp", "tensor-parallel training (column/row splits, vocab-parallel head) x data "
                                        "parallel; option tp_size (default: world size)",
                                  [](const dschat::ConfigTable& options) {
                                    return std::make_shared<TensorParallelStrategy>(options);
                                  });
}
