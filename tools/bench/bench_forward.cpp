// Times CausalLM::forward for a model plugin on random weights: dschat's half of bench_model_forward.py.
//
//   bench_forward PLUGIN.so CONFIG.json BATCH TOKENS DTYPE(f32|bf16) ITERATIONS THREADS
//
// Prints one JSON line: {"dtype":..., "median_ms":..., "min_ms":..., "logits_checksum":...}.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include "dschat/framework/registry.h"
#include "dschat/sdk/config_document.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/plugin.h"

using namespace dschat;

int main(int argc, char** argv) try {
  if (argc != 8) {
    std::cerr << "usage: bench_forward PLUGIN.so CONFIG.json BATCH TOKENS f32|bf16 ITERATIONS THREADS\n";
    return 2;
  }
  const auto config = read_hf_config(argv[2]);
  const int64_t batch = std::stoll(argv[3]), tokens = std::stoll(argv[4]);
  const std::string dtype_name = argv[5];
  const int iterations = std::stoi(argv[6]);
  at::set_num_threads(std::stoi(argv[7]));
  const auto dtype = dtype_name == "bf16" ? at::kBFloat16 : at::kFloat;

  // Through the host's registry, exactly as `dschat` loads the plugin.
  PluginRegistry registry;
  auto document = ConfigDocument::parse_string("", "bench", ".");
  auto family = registry.create_from_library<ModelFamily>(argv[1], document->root());

  auto model = family->build(config, {.dtype = dtype});
  model->eval();
  at::manual_seed(0);
  auto ids = at::randint(3, model->dims().vocab_size, {batch, tokens}, at::kLong);
  auto mask = at::ones({batch, tokens}, at::kLong);
  at::NoGradGuard no_grad;
  std::vector<double> ms;
  double checksum = 0;
  for (int i = 0; i < iterations + 1; ++i) {  // the first run warms up allocators and kernels
    auto start = std::chrono::steady_clock::now();
    auto logits = model->forward(ids, mask).logits;
    checksum = logits.to(at::kFloat).abs().mean().item<double>();
    auto stop = std::chrono::steady_clock::now();
    if (i > 0) ms.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
  }
  std::sort(ms.begin(), ms.end());
  nlohmann::json out = {{"dtype", dtype_name}, {"median_ms", ms[ms.size() / 2]}, {"min_ms", ms.front()},
                        {"logits_checksum", checksum}};
  std::cout << out.dump() << std::endl;
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_forward: " << e.what() << "\n";
  return 1;
}
