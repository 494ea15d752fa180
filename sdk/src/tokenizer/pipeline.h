#pragma once
// Internal to the tokenizer: the stages of HF's pipeline (normalizer -> pre-tokenizer -> model -> post-processor,
// and decoders), each a small class built from its tokenizer.json entry.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace dschat::tok {

// A piece of text between pre-tokenization steps. at_origin: it starts at offset 0 of the original input
// (HF's `offsets_original().0 == 0`, which Metaspace's prepend_scheme "first" looks at).
struct Piece {
  std::string text;
  bool at_origin = false;
};

// Byte spans [first, second) of a pattern's non-overlapping matches, left to right.
using Matches = std::vector<std::pair<std::size_t, std::size_t>>;

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
// HF NormalizedString::split: cuts `piece` around `matches` by `behavior`; empty parts are dropped.
void split_piece(const Piece& piece, const Matches& matches, SplitBehavior behavior, bool invert,
                 std::vector<Piece>& out);

// The regexes the supported models use, as hand-written scanners with the same (Oniguruma) semantics.
enum class KnownRegex { Gpt2, Llama3, Bloom };
// nullopt for a pattern there is no scanner for.
std::optional<KnownRegex> known_regex(std::string_view pattern);
Matches find_regex(KnownRegex re, std::string_view text);

struct Normalizer {
  virtual ~Normalizer() = default;
  virtual std::string normalize(std::string s) const = 0;
};

struct PreTokenizer {
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};

struct Decoder {
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

// Factories used by the json loader; `where` names the file and key for error messages.
std::unique_ptr<Normalizer> make_lowercase();
std::unique_ptr<Normalizer> make_strip(bool left, bool right);
std::unique_ptr<Normalizer> make_prepend(std::string prepend);
std::unique_ptr<Normalizer> make_replace(std::string pattern, std::string content);
std::unique_ptr<Normalizer> make_normalizer_sequence(std::vector<std::unique_ptr<Normalizer>> parts);

std::unique_ptr<PreTokenizer> make_byte_level(bool add_prefix_space, bool use_regex);
enum class PrependScheme { First, Always, Never };
std::unique_ptr<PreTokenizer> make_metaspace(std::string replacement, PrependScheme scheme, bool split);
std::unique_ptr<PreTokenizer> make_split_regex(KnownRegex re, SplitBehavior behavior, bool invert);
std::unique_ptr<PreTokenizer> make_split_string(std::string pattern, SplitBehavior behavior, bool invert);
std::unique_ptr<PreTokenizer> make_whitespace_split();
std::unique_ptr<PreTokenizer> make_pre_tokenizer_sequence(std::vector<std::unique_ptr<PreTokenizer>> parts);

std::unique_ptr<Decoder> make_byte_level_decoder();
std::unique_ptr<Decoder> make_metaspace_decoder(std::string replacement, PrependScheme scheme);
std::unique_ptr<Decoder> make_byte_fallback_decoder();
std::unique_ptr<Decoder> make_fuse_decoder();
std::unique_ptr<Decoder> make_strip_decoder(std::string content, std::size_t start, std::size_t stop);
std::unique_ptr<Decoder> make_replace_decoder(std::string pattern, std::string content);
std::unique_ptr<Decoder> make_decoder_sequence(std::vector<std::unique_ptr<Decoder>> parts);

// GPT-2's byte -> printable character table (as UTF-8), and its inverse (-1: not a byte character).
const std::string& byte_to_char(uint8_t b);
int char_to_byte(char32_t cp);

// BPE with HF's merge order (lowest rank first, then leftmost) and a word cache.
class Bpe {
 public:
  struct Options {
    std::optional<std::string> unk_token, continuing_subword_prefix, end_of_word_suffix;
    bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  };
  // merges: pairs of token strings, in rank order. Throws std::invalid_argument naming the bad entry.
  Bpe(std::unordered_map<std::string, int32_t> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
      Options options);
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(int32_t id) const;
  int64_t size() const { return static_cast<int64_t>(id_to_token_.size()); }
  const Options& options() const { return options_; }

 private:
  struct MergeValue {
    int32_t rank, new_id;
  };
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<uint64_t, MergeValue> merges_;
  Options options_;
  std::optional<int32_t> unk_id_;
  int32_t byte_ids_[256];  // byte_fallback ids of <0xXX>, -1 when absent
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

struct AddedToken {
  int64_t id = 0;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

// Leftmost-longest search for added tokens (what HF does with aho-corasick), applying their flags.
class AddedTokenMatcher {
 public:
  // patterns[i] is what token `tokens[i]` looks like in the text it is matched against.
  void add(std::string pattern, const AddedToken* token);
  bool empty() const { return patterns_.empty(); }
  // Splits `piece` into text pieces (id -1) and added tokens (their id), as HF's find_matches does.
  void split(const Piece& piece, std::vector<std::pair<Piece, int64_t>>& out) const;

 private:
  std::vector<std::pair<std::string, const AddedToken*>> patterns_;
  std::vector<std::vector<std::size_t>> by_first_byte_ = std::vector<std::vector<std::size_t>>(256);
};

struct Impl {
  std::filesystem::path source;
  std::string json_text;  // tokenizer.json as read (or as generated from vocab.json + merges.txt)

  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<Bpe> model;
  std::unique_ptr<Decoder> decoder;
  // Post-processor for a single sequence: a run of special ids, or (-1 marker) the sequence itself.
  std::vector<std::vector<int64_t>> template_items;
  std::vector<bool> template_is_sequence;

  std::vector<std::unique_ptr<AddedToken>> added;
  std::unordered_map<std::string, int64_t> added_by_content;
  std::unordered_map<int64_t, const AddedToken*> added_by_id;
  AddedTokenMatcher raw_matcher, normalized_matcher;

  std::optional<int64_t> bos, eos, pad, unk;

  void finalize_added_tokens();
  std::vector<int64_t> encode_content(std::string_view text) const;
  std::vector<int64_t> apply_template(const std::vector<int64_t>& content) const;
  std::string token_text(int64_t id) const;  // nullptr-like "" when unknown
  bool known_id(int64_t id) const;
  int64_t template_size() const;
};

// Loaders (tokenizer_json.cpp).
std::unique_ptr<Impl> load_tokenizer_json(std::string json_text, const std::filesystem::path& source);
std::unique_ptr<Impl> load_vocab_merges(const std::filesystem::path& dir);
// Reads tokenizer_config.json / special_tokens_map.json in dir (if any) into bos/eos/pad/unk.
void apply_special_token_config(Impl& impl, const std::filesystem::path& dir);
std::string special_token_config_json(const Impl& impl);
std::string read_text_file(const std::filesystem::path& p);

}  // namespace dschat::tok
