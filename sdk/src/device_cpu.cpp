// The CPU build's answer; the CUDA build compiles src/cuda/device_info.cu and src/device_cuda.cpp instead.
#include "dschat/sdk/device.h"

namespace dschat {

bool built_with_cuda() { return false; }

namespace detail {
void set_current_cuda_device(int) {}  // resolve_device never yields a CUDA device here
}  // namespace detail

size_t peak_device_memory(c10::Device) { return 0; }
void reset_peak_device_memory(c10::Device) {}
void synchronize(c10::Device) {}

std::vector<AcceleratorInfo> list_accelerators(std::string* problem) {
  if (problem) *problem = "built without CUDA (configure with -DDSCHAT_CUDA=ON)";
  return {};
}

}  // namespace dschat
