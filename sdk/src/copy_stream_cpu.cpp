// CopyStream in a CPU build (dschat/sdk/copy_stream.h): copies are plain and nothing needs waiting for.
#include "dschat/sdk/copy_stream.h"

namespace dschat {

struct CopyStream::Impl {};

CopyStream::CopyStream(c10::Device) {}
CopyStream::~CopyStream() = default;
void CopyStream::copy(const at::Tensor& dst, const at::Tensor& src) { const_cast<at::Tensor&>(dst).copy_(src); }
void CopyStream::wait_for_host() {}
void CopyStream::wait_for_compute() {}

}  // namespace dschat
