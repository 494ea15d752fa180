// Times ModelFamily::from_pretrained on an HF folder: dschat's half of bench_load.py.
//
//   bench_load PLUGIN.so MODEL_DIR f32|f16|bf16
//
// Prints one JSON line: {"load_s": ..., "parameters": ..., "checksum": ...}.
#include <dlfcn.h>

#include <chrono>
#include <iostream>

#include "dschat/sdk/config_document.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/plugin.h"

using namespace dschat;

int main(int argc, char** argv) try {
  if (argc != 4) {
    std::cerr << "usage: bench_load PLUGIN.so MODEL_DIR f32|f16|bf16\n";
    return 2;
  }
  const std::string dtype_name = argv[3];
  const auto dtype = dtype_name == "bf16" ? at::kBFloat16 : dtype_name == "f16" ? at::kHalf : at::kFloat;

  void* handle = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) throw std::runtime_error(std::string("dlopen: ") + dlerror());
  auto manifest = reinterpret_cast<dschat_manifest_fn>(dlsym(handle, DSCHAT_MANIFEST_SYMBOL))();
  Registrar registrar;
  char error[512] = {0};
  if (manifest->register_factories(&registrar, error, sizeof error) != 0) throw std::runtime_error(error);
  auto document = ConfigDocument::parse_string("", "bench", ".");
  std::shared_ptr<ModelFamily> family;
  for (const auto& entry : registrar.entries())
    if (entry.kind == ModelFamily::kind) family = std::static_pointer_cast<ModelFamily>(entry.make(document->root()));
  if (!family) throw std::runtime_error(std::string(argv[1]) + " offers no model family");

  auto start = std::chrono::steady_clock::now();
  auto model = family->from_pretrained(argv[2], {.dtype = dtype});
  std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;

  int64_t parameters = 0;
  double checksum = 0;
  for (const auto& p : model->parameters()) {
    parameters += p.numel();
  }
  // Touch one weight so the load cannot have been lazy.
  checksum = model->parameters().back().to(at::kFloat).abs().sum().item<double>();
  std::cout << "{\"load_s\": " << took.count() << ", \"parameters\": " << parameters << ", \"checksum\": " << checksum
            << "}" << std::endl;
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_load: " << e.what() << "\n";
  return 1;
}
