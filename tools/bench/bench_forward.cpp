// Times CausalLM::forward for a model plugin on random weights: dschat's half of bench_model_forward.py.
//
//   bench_forward PLUGIN.so CONFIG.json BATCH TOKENS DTYPE(f32|bf16) ITERATIONS THREADS
//
// Prints one JSON line: {"dtype":..., "median_ms":..., "min_ms":..., "logits_checksum":...}.
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include "dschat/sdk/config_document.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/plugin.h"

using namespace dschat;

int main(int argc, char** argv) try {
  if (argc != 8) {
    std::cerr << "usage: bench_forward PLUGIN.so CONFIG.json BATCH TOKENS f32|bf16 ITERATIONS THREADS\n";
    return 2;
  }
  const std::string plugin = argv[1];
  const auto config = read_hf_config(argv[2]);
  const int64_t batch = std::stoll(argv[3]), tokens = std::stoll(argv[4]);
  const std::string dtype_name = argv[5];
  const int iterations = std::stoi(argv[6]);
  at::set_num_threads(std::stoi(argv[7]));
  const auto dtype = dtype_name == "bf16" ? at::kBFloat16 : at::kFloat;

  void* handle = dlopen(plugin.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) throw std::runtime_error(std::string("dlopen: ") + dlerror());
  auto manifest = reinterpret_cast<dschat_manifest_fn>(dlsym(handle, DSCHAT_MANIFEST_SYMBOL))();
  Registrar registrar;
  char error[512] = {0};
  if (manifest->register_factories(&registrar, error, sizeof error) != 0) throw std::runtime_error(error);
  auto document = ConfigDocument::parse_string("", "bench", ".");
  std::shared_ptr<ModelFamily> family;
  for (const auto& entry : registrar.entries()) {
    if (entry.kind == ModelFamily::kind) family = std::static_pointer_cast<ModelFamily>(entry.make(document->root()));
  }
  if (!family) throw std::runtime_error(plugin + " offers no model family");

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
