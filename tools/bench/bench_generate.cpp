// Times a generation plugin (`kv-cache` by default): dschat's half of bench_generate.py and of tools/gpu's decode
// bench.
//
//   bench_generate PLUGIN_DIR MODEL_DIR PROMPTS.safetensors NEW_TOKENS f32|bf16 ITERATIONS THREADS [DEVICE [PLUGIN]]
//
// DEVICE: cpu (default) or cuda[:N]; PLUGIN: the generation plugin (kv-cache, cuda, eager).
// Loads the model with the plugin its config.json's model_type names (opt, llama, bloom) and generates greedily (no eos: every row makes NEW_TOKENS) for the
// prompts' input_ids / attention_mask, and once more with a single new token (prefill + one pick) so the script
// can split off the decode time. Prints one JSON line:
//   {"min_ms", "median_ms", "prefill_ms", "tokens": [[...], ...]}   (times: best / median over ITERATIONS)
// DSCHAT_BENCH_PROFILE=FILE also writes a chrome trace (LibTorch's profiler) of the timed runs' ATen ops: what
// a decode step spends outside dschat's kernels.
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <iostream>

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>

#include "dschat/sdk/config_document.h"
#include "dschat/sdk/cpu_allocator.h"
#include "dschat/sdk/generation.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/safetensors.h"

using namespace dschat;

namespace {
template <class Interface>
std::shared_ptr<Interface> load(const std::string& file, const std::string& name, const ConfigTable& options) {
  void* handle = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);  // never closed
  if (handle == nullptr) throw std::runtime_error(std::string("dlopen: ") + dlerror());
  auto manifest = reinterpret_cast<dschat_manifest_fn>(dlsym(handle, DSCHAT_MANIFEST_SYMBOL))();
  Registrar registrar;
  char error[512] = {0};
  if (manifest->register_factories(&registrar, error, sizeof error) != 0) throw std::runtime_error(error);
  for (const auto& entry : registrar.entries()) {
    if (entry.kind == Interface::kind && entry.name == name)
      return std::static_pointer_cast<Interface>(entry.make(options));
  }
  throw std::runtime_error(file + " offers no " + Interface::kind + " '" + name + "'");
}
// The prompts' left padding uses config.json's pad_token_id (OPT: 1), else its eos (LLaMA-family checkpoints).
int64_t pad_token_id(const std::string& model_dir) {
  const auto config = read_hf_config(model_dir);
  for (const char* key : {"pad_token_id", "eos_token_id"}) {
    if (config.contains(key) && config[key].is_number_integer()) return config[key].get<int64_t>();
  }
  return 0;
}
}  // namespace

int main(int argc, char** argv) try {
  if (argc < 8 || argc > 10) {
    std::cerr << "usage: bench_generate PLUGIN_DIR MODEL_DIR PROMPTS.safetensors NEW_TOKENS f32|bf16 ITERATIONS "
                 "THREADS [DEVICE [PLUGIN]]\n";
    return 2;
  }
  const std::string plugins = argv[1];
  const int64_t new_tokens = std::stoll(argv[4]);
  const std::string dtype_name = argv[5];
  const int iterations = std::stoi(argv[6]);
  at::set_num_threads(std::stoi(argv[7]));
  dschat::install_cpu_allocator_from_environment();  // as the dschat host does
  auto document = ConfigDocument::parse_string("", "bench", ".");
  const std::string model_type = read_hf_config(argv[2]).value("model_type", "");
  auto family = load<ModelFamily>(plugins + "/libdschat-" + model_type + ".so", model_type, document->root());
  const at::Device device(argc > 8 ? argv[8] : "cpu");
  const std::string plugin = argc > 9 ? argv[9] : "kv-cache";
  auto generator = load<Generator>(plugins + "/libdschat-" + plugin + ".so", plugin, document->root());
  auto model = family->from_pretrained(argv[2], {.dtype = dtype_name == "bf16" ? at::kBFloat16 : at::kFloat,
                                                 .device = device});
  model->eval();
  auto prompts = safetensors::File::open(argv[3]);
  at::Tensor ids, mask;
  for (const auto& info : prompts->tensors()) {
    if (info.name == "input_ids") ids = prompts->tensor(info).clone();
    if (info.name == "attention_mask") mask = prompts->tensor(info).clone();
  }
  auto options = generator->defaults();
  options.do_sample = false;
  options.max_new_tokens = new_tokens;
  options.pad_token_id = pad_token_id(argv[2]);
  at::Tensor sequences;
  auto time = [&](int64_t tokens) {
    options.max_new_tokens = tokens;
    std::vector<double> ms;
    for (int i = 0; i < iterations + 1; ++i) {  // the first run warms up allocators and kernels
      auto start = std::chrono::steady_clock::now();
      sequences = generator->generate(*model, ids, mask, options).sequences.cpu();  // .cpu(): the GPU finished
      auto stop = std::chrono::steady_clock::now();
      if (i > 0) ms.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
    }
    std::sort(ms.begin(), ms.end());
    return ms;
  };
  const double prefill_ms = time(1).front();
  std::unique_ptr<torch::autograd::profiler::RecordProfile> profile;
  if (const char* path = std::getenv("DSCHAT_BENCH_PROFILE"))  // a chrome trace of the timed runs' ATen ops
    profile = std::make_unique<torch::autograd::profiler::RecordProfile>(std::string(path));
  auto ms = time(new_tokens);
  profile.reset();
  auto answers = sequences.narrow(1, ids.size(1), sequences.size(1) - ids.size(1)).contiguous();
  std::vector<std::vector<int64_t>> tokens;
  for (int64_t r = 0; r < answers.size(0); ++r) {
    auto row = answers[r];
    tokens.emplace_back(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
  }
  nlohmann::json out = {{"min_ms", ms.front()}, {"median_ms", ms[ms.size() / 2]}, {"prefill_ms", prefill_ms},
                        {"tokens", tokens}};
  std::cout << out.dump() << std::endl;
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_generate: " << e.what() << "\n";
  return 1;
}
