// Tokenizer::encode_batch: the only part of the tokenizer that makes tensors.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include "dschat/sdk/tokenizer.h"
#include "pipeline.h"

namespace dschat {

Tokenizer::Batch Tokenizer::encode_batch(const std::vector<std::string>& texts, int64_t max_length,
                                         bool pad_to_max_length, bool left_padding, bool truncate,
                                         bool add_special_tokens) const {
  const int64_t specials = add_special_tokens ? impl_->template_size() : 0;
  if (max_length <= specials)
    throw TokenizerError(fmt::format("encode_batch: max_length {} leaves no room next to the {} special tokens",
                                     max_length, specials));
  std::vector<std::vector<int64_t>> rows;
  rows.reserve(texts.size());
  int64_t longest = 0;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    std::vector<int64_t> content = encode(texts[i], false);
    // Like HF truncation: cut the text's tokens so that they and the template's special tokens fit.
    if (static_cast<int64_t>(content.size()) + specials > max_length) {
      if (!truncate)
        throw TokenizerError(fmt::format("encode_batch: text {} has {} tokens, more than max_length {}", i,
                                         static_cast<int64_t>(content.size()) + specials, max_length));
      content.resize(static_cast<std::size_t>(max_length - specials));
    }
    rows.push_back(add_special_tokens ? impl_->apply_template(content) : std::move(content));
    longest = std::max<int64_t>(longest, static_cast<int64_t>(rows.back().size()));
  }
  const int64_t width = pad_to_max_length ? max_length : longest;
  const int64_t pad = impl_->pad.value_or(impl_->eos.value_or(0));
  auto ids = at::full({static_cast<int64_t>(rows.size()), width}, pad, at::kLong);
  auto mask = at::zeros({static_cast<int64_t>(rows.size()), width}, at::kLong);
  auto ids_a = ids.accessor<int64_t, 2>();
  auto mask_a = mask.accessor<int64_t, 2>();
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const auto& row = rows[r];
    const int64_t n = static_cast<int64_t>(row.size());
    const int64_t offset = left_padding ? width - n : 0;
    for (int64_t k = 0; k < n; ++k) {
      ids_a[r][offset + k] = row[k];
      mask_a[r][offset + k] = 1;
    }
  }
  return {ids, mask};
}

}  // namespace dschat
