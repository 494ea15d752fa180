#pragma once
// What accelerators this build can use, and the device this process runs on.
//
// The pipeline's top-level `device` ("auto" | "cpu" | "cuda" | "cuda:N") is resolved once per process, before the
// first stage, and strategies place their models there unless their own `device` option says otherwise:
//   "auto"   - CUDA when this is a CUDA build and every local rank has a GPU of its own, else the CPU;
//   "cuda"   - the GPU of this rank's LOCAL_RANK (one process: cuda:0);
//   "cuda:N" - that GPU.
#include <string>
#include <vector>

#include <c10/core/Device.h>

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

// The device `spec` names for a rank with this local rank among local_world_size processes on its machine.
// std::invalid_argument saying what is missing (a CPU build, no visible GPU, too few GPUs) and what to set instead.
DSCHAT_SDK_API c10::Device resolve_device(const std::string& spec, int local_rank = 0, int local_world_size = 1);

// The process's device: set once by the host (use_device also makes it CUDA's current device), read by strategies
// for their "auto". The CPU until set.
DSCHAT_SDK_API void use_device(c10::Device device);
DSCHAT_SDK_API c10::Device default_device();

// The most bytes LibTorch's CUDA caching allocator has held allocated on `device` since the process started (its
// peak statistic); 0 for the CPU and in a CPU build.
DSCHAT_SDK_API size_t peak_device_memory(c10::Device device);
// Starts the peak statistic over from what is allocated now (a stage's own peak); a no-op for the CPU.
DSCHAT_SDK_API void reset_peak_device_memory(c10::Device device);

// This process's resident set now, and the host memory the kernel could still hand out (MemAvailable), in bytes;
// 0 where the kernel does not say.
DSCHAT_SDK_API size_t resident_bytes();
DSCHAT_SDK_API size_t available_host_memory();

// This process's resident-set high-water mark (Linux VmHWM) in bytes; 0 where the kernel does not say.
DSCHAT_SDK_API size_t peak_resident_bytes();
// Starts the high-water mark over from the current resident set (/proc/self/clear_refs, Linux 4.0+); false where
// the kernel refuses, and then peak_resident_bytes() keeps counting from the process start.
DSCHAT_SDK_API bool reset_peak_resident();

// Waits for the work queued on `device` (its current stream), so a host clock read after it times that work; a
// no-op for the CPU.
DSCHAT_SDK_API void synchronize(c10::Device device);

}  // namespace dschat
