// `ema`: exponential moving average of the trained model's parameters, DeepSpeed-Chat's --enable_ema:
//   ema <- beta * ema + (1 - beta) * theta   after every optimizer step from start_step on (before it the EMA
//   just follows theta), written at the end as its own HF folder, stage_dir/"ema".
// Options: beta (0.992), start_step (0), dtype ("float32" | "model": the average's precision; float32 keeps
// the 0.008 * theta increments that bf16 would round away), device ("model" | "cpu").
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/grad_mode.h>

#include "dschat/sdk/hook.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/safetensors.h"
#include "dschat/sdk/tokenizer.h"

namespace {

using namespace dschat;
namespace fs = std::filesystem;

class EmaHook : public Hook {
 public:
  explicit EmaHook(const ConfigTable& table)
      : beta_(table.get_float("beta", 0.992, 0.0, 1.0)),
        start_step_(table.get_int("start_step", 0, 0)),
        keep_fp32_(table.get_choice("dtype", {"float32", "model"}, "float32") == "float32"),
        on_cpu_(table.get_choice("device", {"model", "cpu"}, "model") == "cpu") {}

  void set_model_info(const HookModelInfo& info) override { info_ = info; }

  void on_train_begin(torch::nn::Module& model) override {
    at::NoGradGuard no_grad;
    ema_.clear();
    for (const auto& item : model.named_parameters(/*recurse=*/true)) {
      ema_.emplace_back(item.key(), storage_copy(item.value()));
    }
  }

  void after_optimizer_step(torch::nn::Module& model, const HookStepInfo& info) override {
    at::NoGradGuard no_grad;
    auto params = model.named_parameters(/*recurse=*/true);
    TORCH_CHECK(params.size() == ema_.size(), "ema: the model has ", params.size(), " parameters, the EMA ",
                ema_.size(), " (on_train_begin was not called, or the model changed)");
    size_t i = 0;
    for (const auto& item : params) {
      auto& [name, average] = ema_[i++];
      TORCH_CHECK(name == item.key(), "ema: parameter ", i - 1, " is '", item.key(), "', the EMA holds '", name, "'");
      auto theta = item.value().detach().to(average.device(), average.scalar_type());
      if (info.step < start_step_) {
        average.copy_(theta);
      } else {
        average.lerp_(theta, 1.0 - beta_);  // beta * ema + (1 - beta) * theta
      }
    }
  }

  void save_state(const fs::path& dir) override {
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const auto& [name, average] : ema_) tensors.emplace_back(name, average.to(at::kCPU).contiguous());
    fs::create_directories(dir);
    safetensors::save_file(dir / "ema_state.safetensors", tensors);
  }

  void load_state(const fs::path& dir) override {
    auto saved = safetensors::File::open(dir / "ema_state.safetensors");
    at::NoGradGuard no_grad;
    for (auto& [name, average] : ema_) {
      TORCH_CHECK(saved->contains(name), (dir / "ema_state.safetensors").string(), ": no average for '", name,
                  "' (a checkpoint of another model?)");
      average.copy_(saved->tensor(name));
    }
  }

  // Swaps the averages into the model, exports it through its family (config.json, safetensors with LoRA
  // fused, tokenizer), and puts the trained weights back. A module that is not a CausalLM, or one without a
  // family, gets a plain stage_dir/ema/ema.safetensors of its named parameters.
  void on_train_end(torch::nn::Module& model, const fs::path& stage_dir) override {
    if (ema_.empty()) return;
    const fs::path dir = stage_dir / "ema";
    at::NoGradGuard no_grad;
    auto* lm = dynamic_cast<CausalLM*>(&model);
    if (lm == nullptr || !info_.family) {
      std::vector<std::pair<std::string, at::Tensor>> tensors;
      for (const auto& [name, average] : ema_) tensors.emplace_back(name, average.to(at::kCPU).contiguous());
      fs::create_directories(dir);
      safetensors::save_file(dir / "ema.safetensors", tensors);
      return;
    }
    auto params = model.named_parameters(/*recurse=*/true);
    std::vector<at::Tensor> trained;
    trained.reserve(params.size());
    size_t i = 0;
    for (auto& item : params) {
      trained.push_back(item.value().detach().clone());
      item.value().copy_(ema_.at(i++).second);
    }
    auto restore = [&] {
      size_t j = 0;
      for (auto& item : params) item.value().copy_(trained[j++]);
    };
    try {
      ExportOptions options;
      options.dtype = lm->dtype();
      info_.family->export_hf(*lm, dir, options);
      if (info_.tokenizer) info_.tokenizer->save(dir);
    } catch (...) {
      restore();
      throw;
    }
    restore();
  }

 private:
  at::Tensor storage_copy(const at::Tensor& p) const {
    auto options = p.options();
    if (keep_fp32_ && at::isFloatingType(p.scalar_type())) options = options.dtype(at::kFloat);
    if (on_cpu_) options = options.device(at::kCPU);
    return p.detach().to(options, /*non_blocking=*/false, /*copy=*/true);
  }

  double beta_;
  int64_t start_step_;
  bool keep_fp32_;
  bool on_cpu_;
  HookModelInfo info_;
  std::vector<std::pair<std::string, at::Tensor>> ema_;
};

}  // namespace

DSCHAT_PLUGIN("ema", "0.1.0", "exponential moving average of the trained weights") {
  registrar.add<dschat::Hook>("ema", "EMA of the model's parameters, exported as stage_dir/ema",
                              [](const dschat::ConfigTable& options) { return std::make_shared<EmaHook>(options); });
}
