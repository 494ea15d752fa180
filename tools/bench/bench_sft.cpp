// Times SFT training steps (forward, causal-LM loss, backward, clip, AdamW, schedule) through the SDK's local
// engine on a model plugin: dschat's half of bench_sft_train.py.
//
//   bench_sft PLUGIN.so CONFIG BATCH TOKENS DTYPE(f32|bf16) STEPS THREADS [checkpointing 0|1]
//
// CONFIG is a config.json (random weights, at::manual_seed(0)) or an HF model folder with safetensors, whose
// weights are loaded (converted to DTYPE) so that a Python loop can start from the same ones. The batch is
// at::randint(3, vocab, {BATCH, TOKENS}) right after at::manual_seed(0): the same ids as Python's
// torch.randint(3, vocab, (BATCH, TOKENS), generator=torch.Generator().manual_seed(0)).
//
// Prints one JSON line: {"dtype":..., "median_ms":..., "min_ms":..., "tokens_per_s":..., "losses":[...],
// "weights": "loaded" | "random", ...}.

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include "dschat/framework/registry.h"
#include "dschat/sdk/config_document.h"
#include "dschat/sdk/cpu_allocator.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/optim.h"
#include "dschat/sdk/plugin.h"

using namespace dschat;

int main(int argc, char** argv) try {
  if (argc != 8 && argc != 9) {
    std::cerr << "usage: bench_sft PLUGIN.so CONFIG.json BATCH TOKENS f32|bf16 STEPS THREADS [checkpointing]\n";
    return 2;
  }
  const std::string plugin = argv[1];
  const auto config = read_hf_config(argv[2]);
  const int64_t batch = std::stoll(argv[3]), tokens = std::stoll(argv[4]);
  const std::string dtype_name = argv[5];
  const int steps = std::stoi(argv[6]);
  at::set_num_threads(std::stoi(argv[7]));
  const bool checkpointing = argc == 9 && std::string(argv[8]) == "1";
  const auto dtype = dtype_name == "bf16" ? at::kBFloat16 : at::kFloat;
  install_cpu_allocator_from_environment();  // as `dschat run` does: DSCHAT_CPU_ALLOCATOR=system turns it off

  // Through the host's registry, exactly as `dschat` loads the plugin.
  PluginRegistry registry;
  auto document = ConfigDocument::parse_string("", "bench", ".");
  auto family = registry.create_from_library<ModelFamily>(plugin, document->root());

  const std::filesystem::path source = argv[2];
  const bool load = std::filesystem::is_directory(source) &&
                    (std::filesystem::exists(source / "model.safetensors") ||
                     std::filesystem::exists(source / "model.safetensors.index.json"));
  at::manual_seed(0);
  auto model = load ? family->from_pretrained(source, {.dtype = dtype}) : family->build(config, {.dtype = dtype});
  OptimizerOptions options;
  options.learning_rate = 1e-5;  // small: the timing must not depend on where training goes
  options.lr_scheduler = "cosine";
  options.total_steps = steps + 1;
  options.gradient_checkpointing = checkpointing;
  auto engine = make_local_engine(model, model, options, at::kCPU, "bench");
  engine->train(true);
  at::manual_seed(0);  // the batch does not depend on how many random numbers building the model drew
  auto ids = at::randint(3, model->dims().vocab_size, {batch, tokens}, at::kLong);
  auto mask = at::ones({batch, tokens}, at::kLong);
  std::vector<double> ms;
  double forward_ms = 0, backward_ms = 0, step_ms = 0;
  auto since = [](auto start) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  };
  nlohmann::json losses = nlohmann::json::array();
  for (int i = 0; i < steps + 1; ++i) {  // the first step warms up allocators and creates the Adam state
    auto start = std::chrono::steady_clock::now();
    auto logits = engine->forward(ids, mask).logits;
    const int64_t V = logits.size(-1);
    auto loss = at::cross_entropy_loss(logits.slice(1, 0, -1).to(at::kFloat).reshape({-1, V}),
                                       ids.slice(1, 1).reshape({-1}));
    losses.push_back(loss.item<double>());
    const double f = since(start);
    engine->backward(loss);
    const double b = since(start) - f;
    engine->step();
    const double total = since(start);
    if (i > 0) {
      ms.push_back(total);
      forward_ms += f / steps;
      backward_ms += b / steps;
      step_ms += (total - f - b) / steps;
    }
  }
  std::sort(ms.begin(), ms.end());
  nlohmann::json out = {{"dtype", dtype_name},
                        {"median_ms", ms[ms.size() / 2]},
                        {"min_ms", ms.front()},
                        {"tokens_per_s", static_cast<double>(batch * tokens) / (ms[ms.size() / 2] / 1e3)},
                        {"losses", losses},
                        {"weights", load ? "loaded" : "random"},
                        {"forward_ms", forward_ms},
                        {"backward_ms", backward_ms},
                        {"optimizer_ms", step_ms},
                        {"engine", engine->describe()}};
  std::cout << out.dump() << std::endl;
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_sft: " << e.what() << "\n";
  return 1;
}
