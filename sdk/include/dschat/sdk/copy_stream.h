#pragma once
// Host <-> GPU copies on a side stream, so that ZeRO offload's transfers overlap with the compute on the current
// stream (DeepSpeed's offload does the same). On the CPU, and in a CPU build, a copy is a plain copy_ and the
// waits do nothing.
//
//   CopyStream copies(device);
//   copies.copy(host_slice, device_slice);   // queued after what the current stream has queued so far
//   ...                                       // more compute on the current stream
//   copies.wait_for_host();                   // before the host reads host_slice
#include <memory>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "dschat/sdk/export.h"

namespace dschat {

class DSCHAT_SDK_API CopyStream {
 public:
  explicit CopyStream(c10::Device device);
  ~CopyStream();
  CopyStream(const CopyStream&) = delete;
  CopyStream& operator=(const CopyStream&) = delete;

  // dst.copy_(src) on the side stream, after the work the current stream has queued so far (src is ready). The
  // caching allocator is told the GPU tensor is in use there, so it is not reused before the copy ends. Host
  // memory should be pinned for the copy to be asynchronous.
  void copy(const at::Tensor& dst, const at::Tensor& src);
  // The host waits for every copy queued so far (before it reads a host destination).
  void wait_for_host();
  // The current stream waits for every copy queued so far (before kernels read a GPU destination); the host
  // does not block.
  void wait_for_compute();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dschat
