// Times ModelFamily::from_pretrained on an HF folder: dschat's half of bench_load.py.
//
//   bench_load PLUGIN.so MODEL_DIR f32|f16|bf16
//
// Prints one JSON line: {"load_s": ..., "parameters": ..., "checksum": ...}.
#include <chrono>
#include <iostream>

#include "dschat/framework/registry.h"
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

  // Through the host's registry, exactly as `dschat` loads the plugin.
  PluginRegistry registry;
  auto document = ConfigDocument::parse_string("", "bench", ".");
  auto family = registry.create_from_library<ModelFamily>(argv[1], document->root());

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
