#pragma once
// An RL stage's checkpoints: <stage_dir>/checkpoints/step-N/ holding each trained model's engine checkpoint
// (<name>/), each hook's state (hook-<i>/), and <marker> (e.g. ppo.json: the data position), written last and
// atomically, so a folder without it is incomplete and never resumed from. The two newest are kept.
//
//   save_stage_checkpoint(stage_dir, {{"actor", actor_engine}, {"critic", critic_engine}}, hooks, position,
//                         "ppo.json", comm);
//   if (auto position = restore_stage_checkpoint(stage_dir, engines, hooks, "ppo.json")) { ... }
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dschat/sdk/export.h"

namespace dschat {

class Communicator;
class Engine;
class Hook;

namespace rlhf {

struct CheckpointedEngine {
  std::string name;  // its folder in the checkpoint
  Engine* engine = nullptr;
};

struct RestoredCheckpoint {
  std::filesystem::path dir;
  nlohmann::json position;  // as saved (read back from the first engine's checkpoint)
};

// Collective: every rank calls it; the engines write their shards, rank 0 the hooks and the marker. Returns the
// checkpoint folder (step-<first engine's global step>).
DSCHAT_SDK_API std::filesystem::path save_stage_checkpoint(const std::filesystem::path& stage_dir,
                                                           const std::vector<CheckpointedEngine>& engines,
                                                           const std::vector<std::shared_ptr<Hook>>& hooks,
                                                           const nlohmann::json& position, const std::string& marker,
                                                           Communicator& comm);
// Loads the newest complete checkpoint into the engines and hooks (after the hooks' on_train_begin), if any.
DSCHAT_SDK_API std::optional<RestoredCheckpoint> restore_stage_checkpoint(
    const std::filesystem::path& stage_dir, const std::vector<CheckpointedEngine>& engines,
    const std::vector<std::shared_ptr<Hook>>& hooks, const std::string& marker);

}  // namespace rlhf
}  // namespace dschat
