#pragma once
#include "dschat/framework/pipeline.h"

namespace dschat {

// Runs the stages in order into pipeline.output_dir. A stage whose output folder is already complete (from an
// earlier run) is reused, not rerun. Returns false (after printing the error) when a stage fails.
bool run_pipeline(const Pipeline& pipeline, const PluginRegistry& registry);

}  // namespace dschat
