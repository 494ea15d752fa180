// The CUDA build's device parts written against LibTorch's CUDA API (the CPU build: device_cpu.cpp).
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include "dschat/sdk/device.h"

namespace dschat {

namespace detail {
void set_current_cuda_device(int index) { c10::cuda::set_device(static_cast<c10::DeviceIndex>(index)); }
}  // namespace detail

size_t peak_device_memory(c10::Device device) {
  if (!device.is_cuda()) return 0;
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
  return static_cast<size_t>(stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak);
}

void reset_peak_device_memory(c10::Device device) {
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
}

void synchronize(c10::Device device) {
  if (device.is_cuda()) c10::cuda::getCurrentCUDAStream(device.index()).synchronize();
}

}  // namespace dschat
