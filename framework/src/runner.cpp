#include "dschat/framework/runner.h"

#include <malloc.h>

#include <chrono>
#include <filesystem>
#include <iostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dschat/framework/data.h"
#include "dschat/framework/metrics.h"
#include "dschat/sdk/atomic_file.h"
#include "dschat/sdk/cpu_allocator.h"
#include "dschat/sdk/device.h"
#include "dschat/sdk/memory_plan.h"
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/interrupt.h"
#include "dschat/sdk/tokenizer.h"

namespace dschat {

namespace {

// A stage's final model is complete once this marker exists; it is written last, atomically.
constexpr const char* kCompleteMarker = "COMPLETE";

// Ranks other than 0 train alongside rank 0 but write no metrics and print no progress: rank 0 records the
// run (its losses are already averaged over the ranks by the train loop).
class NoMetrics : public MetricsSink {
 public:
  void scalar(const std::string&, double, int64_t) override {}
  void flush() override {}
};
class NoProgress : public Progress {
 public:
  void start(const std::string&, int64_t) override {}
  void update(int64_t, const std::map<std::string, double>&, int64_t) override {}
  void finish() override {}
};

class HostStageContext : public StageContext {
 public:
  HostStageContext(const Pipeline& pipeline, const StageSpec& stage, std::shared_ptr<HostDataSource> data)
      : data_(std::move(data)), pipeline_(pipeline), stage_(stage), stage_dir_(pipeline.output_dir / stage.name) {}

  // Called once the stage has run: what the data pipeline skipped or dropped becomes part of the record.
  void record_data_counts() {
    if (!data_used_) return;
    DataCounts counts = data_->counts();
    metrics().scalar("data/skipped_rows", static_cast<double>(counts.skipped_rows), 0);
    metrics().scalar("data/too_long_skipped", static_cast<double>(counts.too_long_skipped), 0);
    metrics().scalar("data/ppo_prompts_dropped", static_cast<double>(counts.ppo_prompts_dropped), 0);
  }
  void finish() {
    progress_.finish();
    if (metrics_) metrics_->flush();
  }

  ModelHandle model(const std::string& role) const override {
    ModelHandle handle;
    handle.dir = model_dir(role);
    const std::string& reference = stage_.roles.at(role);
    // A stage output keeps the model entry it descends from; follow references back to a [models.*] entry.
    const ModelSpec* spec = root_model(reference);
    handle.family = spec->family;
    handle.hf_config = read_hf_config(handle.dir);
    handle.options.dtype = spec->scalar_type();
    handle.random_init = pipeline_.models.count(reference) && spec->init == "random";
    return handle;
  }

  std::shared_ptr<CausalLM> load_model(const std::string& role) const override {
    ModelHandle handle = model(role);
    std::shared_ptr<CausalLM> model;
    if (handle.random_init) {
      at::manual_seed(static_cast<int64_t>(pipeline_.seed));
      model = handle.family->build(handle.hf_config, handle.options);
    } else {
      model = handle.family->from_pretrained(handle.dir, handle.options);
    }
    model->set_family(handle.family);
    return model;
  }

  std::shared_ptr<Tokenizer> tokenizer(const std::string& role) const override {
    return Tokenizer::from_dir(model_dir(role));
  }

  const DataSource& data() const override {
    data_used_ = true;
    return *data_;
  }
  MetricsSink& metrics() override {
    if (!world().is_main()) return no_metrics_;
    if (!metrics_) metrics_ = std::make_unique<StageMetrics>(stage_dir_);  // only stages that run get files
    return *metrics_;
  }
  Progress& progress() override {
    if (!world().is_main()) return no_progress_;
    return progress_;
  }
  Strategy& strategy() override { return *stage_.strategy.strategy; }
  Generator* generator() override { return stage_.generator.get(); }
  const std::vector<std::shared_ptr<Hook>>& hooks() override { return stage_.hooks; }
  const std::vector<WeightedReward>& rewards() override { return stage_.rewards; }

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
  const ModelSpec* root_model(const std::string& reference) const { return &dschat::root_model(pipeline_, reference); }

  std::shared_ptr<HostDataSource> data_;  // one per pipeline run, shared by its stages
  mutable bool data_used_ = false;
  std::unique_ptr<StageMetrics> metrics_;
  ConsoleProgress progress_;
  NoMetrics no_metrics_;
  NoProgress no_progress_;
  const Pipeline& pipeline_;
  const StageSpec& stage_;
  std::filesystem::path stage_dir_;
};

// What a killed save leaves behind (step-N.tmp-PID/, step-N.tmp/, final.tmp, file.tmp-PID-K): no reader looks at
// them, and a model's worth each, they fill disks. Removed before the stage runs again.
void remove_stale_temporaries(const std::filesystem::path& stage_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<fs::path> stale;
  for (auto it = fs::recursive_directory_iterator(stage_dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const size_t tmp = name.find(".tmp");
    if (tmp == std::string::npos || tmp == 0) continue;
    const char after = tmp + 4 < name.size() ? name[tmp + 4] : '\0';
    if (after != '\0' && after != '-' && after != '.') continue;  // "x.tmpl" is not ours
    stale.push_back(it->path());
    if (it->is_directory()) it.disable_recursion_pending();
  }
  for (const auto& path : stale) {
    fs::remove_all(path, ec);
    std::cout << fmt::format("removed {}, left by an interrupted save\n", path.string());
  }
}

}  // namespace

RunOutcome run_pipeline(const Pipeline& pipeline, const PluginRegistry& registry) {
  auto& comm = world();
  const bool main_rank = comm.is_main();
  std::filesystem::create_directories(pipeline.output_dir);
  // What ran, and with which plugins, next to what it produced.
  if (main_rank) {
    write_file_atomic(pipeline.output_dir / "pipeline.resolved.toml", pipeline.document->to_toml() + "\n");
    write_file_atomic(pipeline.output_dir / "plugins.txt", registry.table_text());
    write_file_atomic(pipeline.output_dir / "plugins.json", registry.table_json() + "\n");
  }

  // Loaded lazily, on the first stage that asks; the tokenized cache lives beside the stages it serves.
  auto data = std::make_shared<HostDataSource>(pipeline.data, pipeline.seed, pipeline.output_dir / ".cache");
  for (size_t i = 0; i < pipeline.stages.size(); ++i) {
    const StageSpec& stage = pipeline.stages[i];
    HostStageContext context(pipeline, stage, data);
    auto marker = context.stage_dir() / "final" / kCompleteMarker;
    bool complete = std::filesystem::exists(marker);
    try {
      complete = comm.max(complete ? 1.0 : 0.0) > 0.0;  // all ranks decide alike (the run folder is shared)
    } catch (const std::exception& e) {
      std::cerr << fmt::format("error: stage {}: {}\n", stage.name, e.what());
      return {};
    }
    if (complete) {
      std::cout << fmt::format("[{}/{}] stage {}: reusing {}\n", i + 1, pipeline.stages.size(), stage.name,
                               (context.stage_dir() / "final").string());
      continue;
    }
    // A signal that came outside a training loop (an evaluation, an export): the finished stages are kept, and
    // the next one does not start.
    if (const int sig = stop_signal_everywhere()) {
      if (main_rank)
        std::cerr << fmt::format("stopped by {} before stage {}; the finished stages are kept: run the same command "
                                 "again to continue\n", signal_name(sig), stage.name);
      return {false, sig};
    }
    std::cout << fmt::format("[{}/{}] stage {} ({})\n", i + 1, pipeline.stages.size(), stage.name,
                             stage.algorithm_name);
    std::filesystem::create_directories(context.stage_dir());
    if (main_rank) remove_stale_temporaries(context.stage_dir());
    comm.barrier();  // no rank saves into the stage before the leftovers are gone
    auto start = std::chrono::steady_clock::now();
    // The stage's own memory peaks (what `dschat plan` predicts), not the process's since it started: what
    // earlier stages freed goes back to the kernel first (the allocator's cached blocks, glibc's free heap).
    empty_cpu_cache();
    ::malloc_trim(0);
    const c10::Device device = default_device();
    const bool resident_reset = reset_peak_resident();
    reset_peak_device_memory(device);
    // Every stage starts from the pipeline's seed (DeepSpeed-Chat seeds each step's main.py), so what it draws
    // (a new value head, dropout) does not depend on what earlier stages drew or whether they were reused.
    at::manual_seed(static_cast<int64_t>(pipeline.seed));
    try {
      // Ranks that hold one model between them (tp) read the same batches: the stage shards data by replica.
      set_tensor_parallel_size(stage.strategy.strategy->tensor_parallel_size());
      call_plugin(registry.find(Algorithm::kind, stage.algorithm_name), [&] { stage.algorithm->run(context); });
      context.record_data_counts();
      context.finish();
      comm.barrier();  // rank 0 marks the stage complete only once every rank has finished it
    } catch (const StopRequested& e) {
      context.finish();
      if (main_rank)
        std::cerr << fmt::format("stage {}: {}\nto resume, run the same command again: finished stages are reused "
                                 "and {} continues from that checkpoint\n",
                                 stage.name, e.what(), stage.name);
      return {false, e.signal()};
    } catch (const std::exception& e) {
      context.finish();
      std::cerr << fmt::format("error: stage {} failed{}: {}\n", stage.name,
                               comm.size() > 1 ? fmt::format(" on rank {}", comm.rank()) : "", printable_text(e.what()));
      return {};
    }
    const auto peak_resident = static_cast<int64_t>(peak_resident_bytes());
    const auto peak_device = static_cast<int64_t>(peak_device_memory(device));
    if (main_rank) {
      nlohmann::json memory = {{"peak_resident_bytes", peak_resident},
                               {"peak_resident_since", resident_reset ? "stage start" : "process start"}};
      if (device.is_cuda()) memory["peak_device_bytes"] = peak_device;
      write_file_atomic(context.stage_dir() / "memory.json", memory.dump(2) + "\n");
      write_file_atomic(marker, fmt::format("stage {} finished\n", stage.name));
    }
    std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    std::cout << fmt::format("[{}/{}] stage {} done in {:.1f}s, peak memory {} resident{}\n", i + 1,
                             pipeline.stages.size(), stage.name, took.count(), format_bytes(peak_resident),
                             device.is_cuda() ? fmt::format(", {} on {}", format_bytes(peak_device), device.str()) : "");
  }
  return {true, 0};
}

}  // namespace dschat
