#pragma once
// What accelerators this build can use. The CUDA build answers from the CUDA runtime; the CPU build says so.
#include <string>
#include <vector>

#include "dschat/sdk/export.h"

namespace dschat {

struct AcceleratorInfo {
  int index = 0;
  std::string name;
  int compute_major = 0;
  int compute_minor = 0;
  size_t memory_bytes = 0;
};

// Empty in a CPU build or when no GPU is visible; `problem` says why when the runtime reported an error.
DSCHAT_SDK_API std::vector<AcceleratorInfo> list_accelerators(std::string* problem = nullptr);
DSCHAT_SDK_API bool built_with_cuda();

}  // namespace dschat
