// CopyStream in a CUDA build (dschat/sdk/copy_stream.h): one stream from LibTorch's pool per CopyStream, ordered
// against the current stream with events.
#include "dschat/sdk/copy_stream.h"

#include <optional>

#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace dschat {

struct CopyStream::Impl {
  c10::DeviceIndex device = 0;
  std::optional<c10::cuda::CUDAStream> stream;  // unset on the CPU
};

CopyStream::CopyStream(c10::Device device) : impl_(std::make_unique<Impl>()) {
  if (!device.is_cuda()) return;
  impl_->device = device.has_index() ? device.index() : c10::cuda::current_device();
  impl_->stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, impl_->device);
}

CopyStream::~CopyStream() = default;

void CopyStream::copy(const at::Tensor& dst, const at::Tensor& src) {
  if (!impl_->stream) {
    const_cast<at::Tensor&>(dst).copy_(src);
    return;
  }
  at::cuda::CUDAEvent ready;
  ready.record(c10::cuda::getCurrentCUDAStream(impl_->device));
  ready.block(*impl_->stream);
  {
    c10::cuda::CUDAStreamGuard on_side(*impl_->stream);
    const_cast<at::Tensor&>(dst).copy_(src, /*non_blocking=*/true);
  }
  for (const at::Tensor* t : {&dst, &src})
    if (t->is_cuda()) c10::cuda::CUDACachingAllocator::recordStream(t->storage().data_ptr(), *impl_->stream);
}

void CopyStream::wait_for_host() {
  if (impl_->stream) impl_->stream->synchronize();
}

void CopyStream::wait_for_compute() {
  if (!impl_->stream) return;
  at::cuda::CUDAEvent done;
  done.record(*impl_->stream);
  done.block(c10::cuda::getCurrentCUDAStream(impl_->device));
}

}  // namespace dschat
