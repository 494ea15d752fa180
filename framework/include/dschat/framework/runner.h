#pragma once
#include "dschat/framework/pipeline.h"

namespace dschat {

struct RunOutcome {
  bool ok = false;
  int stop_signal = 0;  // a stage stopped on SIGINT/SIGTERM after saving a checkpoint (ok is false)
  operator bool() const { return ok; }
  int exit_code() const { return ok ? 0 : stop_signal ? 128 + stop_signal : 1; }
};

// Runs the stages in order into pipeline.output_dir. A stage whose output folder is already complete (from an
// earlier run) is reused, not rerun. Not ok (after printing the error) when a stage fails or was stopped.
RunOutcome run_pipeline(const Pipeline& pipeline, const PluginRegistry& registry);

}  // namespace dschat
