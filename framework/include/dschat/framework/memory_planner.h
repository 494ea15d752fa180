#pragma once
// The memory plan of a whole pipeline (dschat/sdk/memory_plan.h per stage): what `dschat plan` prints and what
// `validate` / `run` check before any work starts.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "dschat/sdk/memory_plan.h"

namespace dschat {

struct Pipeline;

struct PlanOptions {
  int64_t world_size = 0;          // 0: the launcher's WORLD_SIZE, else 1
  int64_t ranks_per_host = 0;      // 0: the launcher's LOCAL_WORLD_SIZE, else the world size (one host)
  int64_t device_memory_bytes = 0;  // 0: this machine's (the GPU's memory, or the host's available memory)
};

struct PipelinePlan {
  std::vector<StagePlan> stages;
  std::vector<std::string> undescribed;  // stages whose algorithm does not describe its memory
  int64_t world_size = 1;
  int64_t ranks_per_host = 1;
  bool on_gpu = false;
  std::string device;              // "cpu (host memory)" or the GPU's name
  int64_t device_capacity = 0;     // bytes one rank may use on its device (the host's: shared by ranks_per_host)
  int64_t host_capacity = 0;       // the host's available memory, for offloaded terms on a GPU run
};

PipelinePlan plan_pipeline(const Pipeline& pipeline, const PlanOptions& options);

// The table `dschat plan` prints: per stage and phase, every term; the peak phase marked.
std::string describe_plan(const PipelinePlan& plan);
nlohmann::json plan_json(const PipelinePlan& plan);

// Why the pipeline cannot run here (each stage that does not fit: its figures, its largest term and what would
// make it fit); nullopt when every stage fits.
std::optional<std::string> plan_refusal(const PipelinePlan& plan);

// Why a tensor-parallel stage cannot cut one of the models it trains over its tp_size ranks (heads, feed-forward
// width or a split head's vocabulary that does not divide); nullopt when every one divides. validate and run
// check it before any work, with or without the memory check.
std::optional<std::string> tensor_parallel_refusal(const Pipeline& pipeline);

}  // namespace dschat
