#pragma once
// PTX (InstructGPT's pretraining mix, DeepSpeed-Chat's --unsupervised_dataset): the pretraining texts as
// eos-joined blocks of max_seq_len tokens (DeepSpeed-Chat's group_texts), handed out in order and wrapping
// around; position() is saved in stage checkpoints so a resumed stage continues where it stopped.
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dschat/sdk/export.h"

namespace dschat {

class Tokenizer;

namespace rlhf {

class DSCHAT_SDK_API PtxStream {
 public:
  PtxStream() = default;
  // `separator` (the eos / pad id) ends every text; a stream shorter than one block is one short block.
  PtxStream(const std::vector<std::string>& texts, const Tokenizer& tokenizer, int64_t block, int64_t separator);

  bool empty() const { return blocks_.empty(); }
  // The next `rows` blocks as input ids [rows, block], on the host.
  at::Tensor next(int64_t rows);
  size_t position() const { return next_; }
  void set_position(size_t position) { next_ = position; }

 private:
  std::vector<std::vector<int64_t>> blocks_;
  size_t next_ = 0;
};

}  // namespace rlhf
}  // namespace dschat
