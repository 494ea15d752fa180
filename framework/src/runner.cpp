#include "dschat/framework/runner.h"

#include <chrono>
#include <iostream>

#include <fmt/format.h>

#include "dschat/sdk/atomic_file.h"

namespace dschat {

namespace {

// A stage's final model is complete once this marker exists; it is written last, atomically.
constexpr const char* kCompleteMarker = "COMPLETE";

class HostStageContext : public StageContext {
 public:
  HostStageContext(const Pipeline& pipeline, const StageSpec& stage)
      : pipeline_(pipeline), stage_(stage), stage_dir_(pipeline.output_dir / stage.name) {}

  const std::string& stage_name() const override { return stage_.name; }
  const std::filesystem::path& stage_dir() const override { return stage_dir_; }
  uint64_t seed() const override { return pipeline_.seed; }

  std::filesystem::path model_dir(const std::string& role) const override {
    auto it = stage_.roles.find(role);
    if (it == stage_.roles.end())
      throw std::invalid_argument(fmt::format("stage {} has no model role '{}'", stage_.name, role));
    if (auto model = pipeline_.models.find(it->second); model != pipeline_.models.end()) return model->second.path;
    return pipeline_.output_dir / it->second / "final";
  }

 private:
  const Pipeline& pipeline_;
  const StageSpec& stage_;
  std::filesystem::path stage_dir_;
};

}  // namespace

bool run_pipeline(const Pipeline& pipeline, const PluginRegistry& registry) {
  std::filesystem::create_directories(pipeline.output_dir);
  // What ran, and with which plugins, next to what it produced.
  write_file_atomic(pipeline.output_dir / "pipeline.resolved.toml", pipeline.document->to_toml() + "\n");
  write_file_atomic(pipeline.output_dir / "plugins.txt", registry.table_text());
  write_file_atomic(pipeline.output_dir / "plugins.json", registry.table_json() + "\n");

  for (size_t i = 0; i < pipeline.stages.size(); ++i) {
    const StageSpec& stage = pipeline.stages[i];
    HostStageContext context(pipeline, stage);
    auto marker = context.stage_dir() / "final" / kCompleteMarker;
    if (std::filesystem::exists(marker)) {
      std::cout << fmt::format("[{}/{}] stage {}: reusing {}\n", i + 1, pipeline.stages.size(), stage.name,
                               (context.stage_dir() / "final").string());
      continue;
    }
    std::cout << fmt::format("[{}/{}] stage {} ({})\n", i + 1, pipeline.stages.size(), stage.name,
                             stage.algorithm_name);
    std::filesystem::create_directories(context.stage_dir());
    auto start = std::chrono::steady_clock::now();
    try {
      call_plugin(registry.find(Algorithm::kind, stage.algorithm_name), [&] { stage.algorithm->run(context); });
    } catch (const std::exception& e) {
      std::cerr << fmt::format("error: stage {} failed: {}\n", stage.name, e.what());
      return false;
    }
    write_file_atomic(marker, fmt::format("stage {} finished\n", stage.name));
    std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    std::cout << fmt::format("[{}/{}] stage {} done in {:.1f}s\n", i + 1, pipeline.stages.size(), stage.name,
                             took.count());
  }
  return true;
}

}  // namespace dschat
