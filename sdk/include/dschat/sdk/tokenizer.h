#pragma once
// Tokenizers read from HF `tokenizer.json` (or an OPT/GPT-2 style vocab.json + merges.txt folder) that give the
// same ids and decoded text as HF `tokenizers`. Supported: BPE (byte-level and SentencePiece-style with
// byte_fallback), the normalizers/pre-tokenizers/decoders/post-processors LLaMA, OPT, BLOOM and GPT-2 use, and
// added tokens with HF's lstrip/rstrip/single_word/normalized rules. Anything else is refused at load time with
// an error naming the file and the component.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "dschat/sdk/export.h"

namespace dschat {

// Every load/encode problem: the message names the file (when there is one) and what is wrong.
class DSCHAT_SDK_API TokenizerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace tok {
struct Impl;
}

class DSCHAT_SDK_API Tokenizer {
 public:
  // Loads a HF tokenizer.json. bos/eos/pad/unk are taken from tokenizer_config.json / special_tokens_map.json
  // beside it when present; otherwise unk is the model's unk_token, bos the first special token of the
  // post-processor template, eos a special token spelled like an end-of-text marker.
  static std::shared_ptr<Tokenizer> from_file(const std::filesystem::path& tokenizer_json);
  // A model folder: tokenizer.json, else vocab.json + merges.txt (byte-level BPE as OPT/GPT-2 ship it; a BOS is
  // prepended when tokenizer_config.json says add_bos_token).
  static std::shared_ptr<Tokenizer> from_dir(const std::filesystem::path& dir);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // text must be valid UTF-8 (TokenizerError otherwise). Thread-safe.
  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Ids outside the vocabulary are skipped, as HF does.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const;

  struct Batch {
    at::Tensor input_ids, attention_mask;  // int64 [B, L]
  };
  // Pads with pad_id() (else eos_id(), else 0) to max_length (pad_to_max_length) or to the longest row.
  // truncate: rows longer than max_length keep their first tokens; the template's special tokens are kept,
  // as HF truncation does. Without truncate a longer row is an error.
  Batch encode_batch(const std::vector<std::string>& texts, int64_t max_length, bool pad_to_max_length,
                     bool left_padding, bool truncate = true, bool add_special_tokens = true) const;

  // Number of ids (largest id + 1), added tokens included: the embedding size a model needs at least.
  int64_t vocab_size() const;
  std::optional<int64_t> token_to_id(std::string_view token) const;
  // "" for an unknown id.
  std::string id_to_token(int64_t id) const;
  bool is_special(int64_t id) const;
  std::optional<int64_t> bos_id() const;
  std::optional<int64_t> eos_id() const;
  std::optional<int64_t> pad_id() const;
  std::optional<int64_t> unk_id() const;
  // Number of special tokens the post-processor adds to one sequence.
  int64_t num_special_tokens_to_add() const;

  // Writes dir/tokenizer.json (the source json, or one generated for vocab.json + merges.txt) and
  // dir/tokenizer_config.json naming the special tokens; each file is written to a temporary and renamed.
  void save(const std::filesystem::path& dir) const;

  const std::filesystem::path& source() const;

 private:
  explicit Tokenizer(std::unique_ptr<tok::Impl> impl);
  std::unique_ptr<tok::Impl> impl_;
  friend struct tok::Impl;
};

}  // namespace dschat
