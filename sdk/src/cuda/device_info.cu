// Compiled by nvcc in the CUDA build only (DSCHAT_CUDA=ON).
#include <cuda_runtime.h>

#include "dschat/sdk/device.h"

namespace dschat {

bool built_with_cuda() { return true; }


std::vector<AcceleratorInfo> list_accelerators(std::string* problem) {
  std::vector<AcceleratorInfo> out;
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    if (problem) *problem = cudaGetErrorString(status);
    return out;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    out.push_back({i, prop.name, prop.major, prop.minor, prop.totalGlobalMem});
  }
  return out;
}

}  // namespace dschat
