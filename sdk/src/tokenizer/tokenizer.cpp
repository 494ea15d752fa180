// The Tokenizer API: added-token splitting, the encode pipeline, decode, special tokens and save.
#include "dschat/sdk/tokenizer.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>

#include "pipeline.h"
#include "unicode.h"

namespace dschat {
namespace tok {

// ---- added tokens ----------------------------------------------------------------------------------------

void AddedTokenMatcher::add(std::string pattern, const AddedToken* token) {
  if (pattern.empty()) return;
  by_first_byte_[static_cast<unsigned char>(pattern[0])].push_back(patterns_.size());
  patterns_.emplace_back(std::move(pattern), token);
  // Longest first, so the first hit at a position is the leftmost-longest match.
  auto& bucket = by_first_byte_[static_cast<unsigned char>(patterns_.back().first[0])];
  std::stable_sort(bucket.begin(), bucket.end(),
                   [&](std::size_t a, std::size_t b) { return patterns_[a].first.size() > patterns_[b].first.size(); });
}

namespace {
// Rust's char::is_alphanumeric on the character before/after a match (approximated by \p{L} and \p{N}).
bool word_char(char32_t cp) { return is_letter(cp) || is_number(cp); }
bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  std::size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return word_char(next_cp(s, i));
}
bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  std::size_t i = 0;
  return word_char(next_cp(s, i));
}
// Byte length of s without its trailing / leading White_Space (Rust trim_end / trim_start).
std::size_t trimmed_end(std::string_view s) {
  std::size_t end = 0, i = 0;
  while (i < s.size())
    if (!is_space(next_cp(s, i))) end = i;
  return end;
}
std::size_t leading_space(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t at = i;
    if (!is_space(next_cp(s, i))) return at;
  }
  return s.size();
}
}  // namespace

void AddedTokenMatcher::split(const Piece& piece, std::vector<std::pair<Piece, int64_t>>& out) const {
  const std::string& s = piece.text;
  auto emit = [&](std::size_t a, std::size_t b, int64_t id) {
    out.push_back({Piece{s.substr(a, b - a), piece.at_origin && a == 0}, id});
  };
  std::size_t start_offset = 0;
  std::size_t pos = 0;
  while (pos < s.size()) {
    // Leftmost-longest match at or after pos.
    const std::pair<std::string, const AddedToken*>* hit = nullptr;
    std::size_t at = pos;
    for (; at < s.size() && !hit; ++at) {
      for (std::size_t k : by_first_byte_[static_cast<unsigned char>(s[at])]) {
        const auto& p = patterns_[k];
        if (s.compare(at, p.first.size(), p.first) == 0) {
          hit = &p;
          break;
        }
      }
    }
    if (!hit) break;
    std::size_t start = at - 1, stop = start + hit->first.size();
    pos = stop;  // matches are found on the original text, as aho-corasick's find_iter does
    const AddedToken& t = *hit->second;
    if (t.single_word) {
      bool start_space = start == 0 || !ends_with_word(std::string_view(s).substr(0, start));
      bool stop_space = stop == s.size() || !starts_with_word(std::string_view(s).substr(stop));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) start = std::max(trimmed_end(std::string_view(s).substr(0, start)), start_offset);
    if (t.rstrip) stop += leading_space(std::string_view(s).substr(stop));
    if (start > start_offset) emit(start_offset, start, -1);
    emit(start, stop, t.id);
    start_offset = stop;
  }
  if (start_offset < s.size()) emit(start_offset, s.size(), -1);
}

// ---- Impl ------------------------------------------------------------------------------------------------

void Impl::finalize_added_tokens() {
  added_by_content.clear();
  added_by_id.clear();
  raw_matcher = {};
  normalized_matcher = {};
  for (const auto& t : added) {
    added_by_content[t->content] = t->id;
    added_by_id[t->id] = t.get();
  }
  // HF builds one trie of the non-normalized tokens (matched on the raw text) and one of the normalized ones
  // (their content normalized, matched on normalized text).
  for (const auto& t : added) {
    if (t->normalized)
      normalized_matcher.add(normalizer ? normalizer->normalize(t->content) : t->content, t.get());
    else
      raw_matcher.add(t->content, t.get());
  }
}

bool Impl::known_id(int64_t id) const {
  return added_by_id.count(id) || (id >= 0 && id <= INT32_MAX && model->id_to_token(static_cast<int32_t>(id)));
}

std::string Impl::token_text(int64_t id) const {
  if (auto it = added_by_id.find(id); it != added_by_id.end()) return it->second->content;
  if (id >= 0 && id <= INT32_MAX)
    if (const std::string* s = model->id_to_token(static_cast<int32_t>(id))) return *s;
  return {};
}

std::vector<int64_t> Impl::encode_content(std::string_view text) const {
  std::vector<int64_t> ids;
  std::vector<std::pair<Piece, int64_t>> stage1, stage2;
  Piece whole{std::string(text), true};
  if (raw_matcher.empty())
    stage1.push_back({std::move(whole), -1});
  else
    raw_matcher.split(whole, stage1);
  std::vector<Piece> words;
  std::vector<int32_t> model_ids;
  for (auto& [piece, id] : stage1) {
    if (id >= 0) {
      ids.push_back(id);
      continue;
    }
    Piece norm{normalizer ? normalizer->normalize(std::move(piece.text)) : std::move(piece.text), piece.at_origin};
    stage2.clear();
    if (normalized_matcher.empty())
      stage2.push_back({std::move(norm), -1});
    else
      normalized_matcher.split(norm, stage2);
    for (auto& [sub, sub_id] : stage2) {
      if (sub_id >= 0) {
        ids.push_back(sub_id);
        continue;
      }
      if (sub.text.empty()) continue;  // HF drops empty splits before pre-tokenizing
      words.clear();
      words.push_back(std::move(sub));
      if (pre_tokenizer) pre_tokenizer->pre_tokenize(words);
      for (const auto& w : words) {
        model_ids.clear();
        model->tokenize(w.text, model_ids);
        ids.insert(ids.end(), model_ids.begin(), model_ids.end());
      }
    }
  }
  return ids;
}

std::vector<int64_t> Impl::apply_template(const std::vector<int64_t>& content) const {
  if (template_items.empty()) return content;
  std::vector<int64_t> out;
  out.reserve(content.size() + 4);
  for (std::size_t i = 0; i < template_items.size(); ++i) {
    if (template_is_sequence[i])
      out.insert(out.end(), content.begin(), content.end());
    else
      out.insert(out.end(), template_items[i].begin(), template_items[i].end());
  }
  return out;
}

int64_t Impl::template_size() const {
  int64_t n = 0;
  for (std::size_t i = 0; i < template_items.size(); ++i)
    if (!template_is_sequence[i]) n += static_cast<int64_t>(template_items[i].size());
  return n;
}

}  // namespace tok

// ---- Tokenizer -------------------------------------------------------------------------------------------

Tokenizer::Tokenizer(std::unique_ptr<tok::Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

std::shared_ptr<Tokenizer> Tokenizer::from_file(const std::filesystem::path& tokenizer_json) {
  auto impl = tok::load_tokenizer_json(tok::read_text_file(tokenizer_json), tokenizer_json);
  tok::apply_special_token_config(*impl, tokenizer_json.parent_path().empty() ? "." : tokenizer_json.parent_path());
  return std::shared_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

std::shared_ptr<Tokenizer> Tokenizer::from_dir(const std::filesystem::path& dir) {
  if (std::filesystem::exists(dir / "tokenizer.json")) return from_file(dir / "tokenizer.json");
  if (std::filesystem::exists(dir / "vocab.json") && std::filesystem::exists(dir / "merges.txt")) {
    auto impl = tok::load_vocab_merges(dir);
    tok::apply_special_token_config(*impl, dir);
    return std::shared_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
  }
  throw TokenizerError(fmt::format("{}: no tokenizer.json, nor vocab.json + merges.txt", dir.string()));
}

std::vector<int64_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  if (!tok::valid_utf8(text)) throw TokenizerError("Tokenizer::encode: the text is not valid UTF-8");
  auto ids = impl_->encode_content(text);
  return add_special_tokens ? impl_->apply_template(ids) : ids;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    if (auto it = impl_->added_by_id.find(id); it != impl_->added_by_id.end()) {
      if (!(skip_special_tokens && it->second->special)) tokens.push_back(it->second->content);
      continue;
    }
    if (id < 0 || id > INT32_MAX) continue;
    const std::string* s = impl_->model->id_to_token(static_cast<int32_t>(id));
    if (!s) continue;
    if (skip_special_tokens) {
      // HF skips by content: a model token spelled like a special added token is skipped too.
      auto c = impl_->added_by_content.find(*s);
      if (c != impl_->added_by_content.end() && impl_->added_by_id.at(c->second)->special) continue;
    }
    tokens.push_back(*s);
  }
  if (!impl_->decoder) {
    std::string out;
    for (std::size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  impl_->decoder->decode_chain(tokens);
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

int64_t Tokenizer::vocab_size() const {
  int64_t n = impl_->model->size();
  for (const auto& [id, t] : impl_->added_by_id) n = std::max(n, id + 1);
  return n;
}

std::optional<int64_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto it = impl_->added_by_content.find(std::string(token)); it != impl_->added_by_content.end()) return it->second;
  if (auto id = impl_->model->token_to_id(token)) return *id;
  return std::nullopt;
}

std::string Tokenizer::id_to_token(int64_t id) const { return impl_->token_text(id); }

bool Tokenizer::is_special(int64_t id) const {
  auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && it->second->special;
}

std::optional<int64_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int64_t> Tokenizer::eos_id() const { return impl_->eos; }
std::optional<int64_t> Tokenizer::pad_id() const { return impl_->pad; }
std::optional<int64_t> Tokenizer::unk_id() const { return impl_->unk; }
int64_t Tokenizer::num_special_tokens_to_add() const { return impl_->template_size(); }
const std::filesystem::path& Tokenizer::source() const { return impl_->source; }

namespace {
void write_atomically(const std::filesystem::path& path, const std::string& content) {
  auto tmp = path;
  tmp += fmt::format(".tmp.{}", ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw TokenizerError(fmt::format("{}: cannot open for writing", tmp.string()));
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    out.flush();
    if (!out) throw TokenizerError(fmt::format("{}: write failed", tmp.string()));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp);
    throw TokenizerError(fmt::format("{}: cannot rename into place: {}", path.string(), ec.message()));
  }
}
}  // namespace

void Tokenizer::save(const std::filesystem::path& dir) const {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw TokenizerError(fmt::format("{}: cannot create directory: {}", dir.string(), ec.message()));
  write_atomically(dir / "tokenizer.json", impl_->json_text);
  write_atomically(dir / "tokenizer_config.json", tok::special_token_config_json(*impl_));
}

}  // namespace dschat
