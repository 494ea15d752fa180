#include "dschat/sdk/rlhf/stage_checkpoint.h"

#include <fmt/format.h>

#include "dschat/sdk/atomic_file.h"
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/hook.h"
#include "dschat/sdk/strategy.h"
#include "dschat/sdk/train_loop.h"

namespace dschat::rlhf {

namespace fs = std::filesystem;

fs::path save_stage_checkpoint(const fs::path& stage_dir, const std::vector<CheckpointedEngine>& engines,
                               const std::vector<std::shared_ptr<Hook>>& hooks, const nlohmann::json& position,
                               const std::string& marker, Communicator& comm) {
  TORCH_CHECK(!engines.empty(), "save_stage_checkpoint: no engines");
  const fs::path dir = stage_dir / "checkpoints" / fmt::format("step-{}", engines.front().engine->global_step());
  for (const auto& e : engines) e.engine->save_checkpoint(dir / e.name, position);
  if (comm.is_main()) {
    for (size_t i = 0; i < hooks.size(); ++i) hooks[i]->save_state(dir / fmt::format("hook-{}", i));
    write_file_atomic(dir / marker, position.dump(2) + "\n");  // last: the checkpoint is complete
    prune_checkpoints(stage_dir, 2, marker);                   // keep the two newest
  }
  comm.barrier();
  return dir;
}

std::optional<RestoredCheckpoint> restore_stage_checkpoint(const fs::path& stage_dir,
                                                           const std::vector<CheckpointedEngine>& engines,
                                                           const std::vector<std::shared_ptr<Hook>>& hooks,
                                                           const std::string& marker) {
  TORCH_CHECK(!engines.empty(), "restore_stage_checkpoint: no engines");
  const std::optional<fs::path> from = latest_checkpoint(stage_dir, marker);
  if (!from) return std::nullopt;
  RestoredCheckpoint restored{*from, {}};
  for (size_t i = 0; i < engines.size(); ++i) {
    auto position = engines[i].engine->load_checkpoint(*from / engines[i].name);
    if (i == 0) restored.position = std::move(position);
  }
  for (size_t i = 0; i < hooks.size(); ++i) hooks[i]->load_state(*from / fmt::format("hook-{}", i));
  return restored;
}

}  // namespace dschat::rlhf
