#include "dschat/sdk/rlhf/ptx.h"

#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>

#include "dschat/sdk/tokenizer.h"

namespace dschat::rlhf {

PtxStream::PtxStream(const std::vector<std::string>& texts, const Tokenizer& tokenizer, int64_t block,
                     int64_t separator) {
  std::vector<int64_t> stream;
  for (const auto& text : texts) {
    auto ids = tokenizer.encode(text, /*add_special_tokens=*/true);
    stream.insert(stream.end(), ids.begin(), ids.end());
    stream.push_back(separator);
  }
  const auto width = static_cast<size_t>(block);
  for (size_t i = 0; i + width <= stream.size(); i += width)
    blocks_.emplace_back(stream.begin() + static_cast<std::ptrdiff_t>(i),
                         stream.begin() + static_cast<std::ptrdiff_t>(i + width));
  if (blocks_.empty() && !stream.empty()) blocks_.push_back(stream);
}

at::Tensor PtxStream::next(int64_t rows) {
  TORCH_CHECK(!blocks_.empty(), "PtxStream::next: no pretraining text");
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < rows; ++i) out.push_back(at::tensor(blocks_[next_++ % blocks_.size()], at::kLong));
  return at::stack(out);
}

}  // namespace dschat::rlhf
