// The CPU build's answer; the CUDA build compiles src/cuda/device_info.cu instead.
#include "dschat/sdk/device.h"

namespace dschat {

bool built_with_cuda() { return false; }

std::vector<AcceleratorInfo> list_accelerators(std::string* problem) {
  if (problem) *problem = "built without CUDA (configure with -DDSCHAT_CUDA=ON)";
  return {};
}

}  // namespace dschat
