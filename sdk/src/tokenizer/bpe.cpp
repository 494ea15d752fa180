// BPE model: HF's merge order (a heap of candidate pairs, lowest rank first, then leftmost), byte_fallback,
// fuse_unk, ignore_merges, continuing_subword_prefix / end_of_word_suffix, and a bounded per-word cache.
#include <fmt/format.h>

#include <queue>
#include <stdexcept>

#include "pipeline.h"

namespace dschat::tok {
namespace {

constexpr std::size_t kCacheCapacity = 1 << 17;
constexpr std::size_t kCacheMaxWordBytes = 256;

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

}  // namespace

Bpe::Bpe(std::unordered_map<std::string, int32_t> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
         Options options)
    : vocab_(std::move(vocab)), options_(std::move(options)) {
  int32_t max_id = -1;
  for (const auto& [tok, id] : vocab_) {
    if (id < 0) throw std::invalid_argument(fmt::format("vocab entry \"{}\" has a negative id {}", tok, id));
    max_id = std::max(max_id, id);
  }
  id_to_token_.resize(static_cast<std::size_t>(max_id + 1));
  for (const auto& [tok, id] : vocab_) id_to_token_[id] = tok;

  const std::size_t prefix_len = options_.continuing_subword_prefix ? options_.continuing_subword_prefix->size() : 0;
  merges_.reserve(merges.size() * 2);
  for (std::size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto ia = vocab_.find(a), ib = vocab_.find(b);
    if (ia == vocab_.end() || ib == vocab_.end())
      throw std::invalid_argument(fmt::format("merge #{} (\"{}\" \"{}\") uses token \"{}\" which is not in the vocab",
                                              rank, a, b, ia == vocab_.end() ? a : b));
    if (b.size() < prefix_len)
      throw std::invalid_argument(fmt::format("merge #{} (\"{}\" \"{}\"): \"{}\" is shorter than the continuing "
                                              "subword prefix", rank, a, b, b));
    std::string merged = a + b.substr(prefix_len);
    auto im = vocab_.find(merged);
    if (im == vocab_.end())
      throw std::invalid_argument(
          fmt::format("merge #{} (\"{}\" \"{}\") makes \"{}\" which is not in the vocab", rank, a, b, merged));
    // Like HF's HashMap collect, a repeated pair keeps its last rank.
    merges_[pair_key(ia->second, ib->second)] = {static_cast<int32_t>(rank), im->second};
  }
  if (options_.unk_token) {
    auto it = vocab_.find(*options_.unk_token);
    if (it == vocab_.end())
      throw std::invalid_argument(fmt::format("unk_token \"{}\" is not in the vocab", *options_.unk_token));
    unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(fmt::format("<0x{:02X}>", b));
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
}

std::optional<int32_t> Bpe::token_to_id(std::string_view token) const {
  auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* Bpe::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= id_to_token_.size()) return nullptr;
  const std::string& s = id_to_token_[id];
  // Holes in a sparse vocab are empty strings; a real token is never empty.
  return s.empty() ? nullptr : &s;
}

void Bpe::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    if (auto id = token_to_id(word)) {
      out.push_back(*id);
      return;
    }
  }
  const bool cacheable = word.size() <= kCacheMaxWordBytes;
  std::string key;
  if (cacheable) {
    key.assign(word);
    std::lock_guard lock(cache_mutex_);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  merge_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    if (cache_.size() >= kCacheCapacity) cache_.clear();
    cache_.emplace(std::move(key), std::move(ids));
  }
}

void Bpe::merge_word(std::string_view w, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    bool removed;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(w.size());
  auto add = [&](int32_t id) {
    int32_t idx = static_cast<int32_t>(symbols.size());
    if (idx > 0) symbols.back().next = idx;
    symbols.push_back({id, idx - 1, -1, false});
  };
  std::optional<int32_t> pending_unk;  // fused (or not yet flushed) unknown run
  std::string s;
  std::size_t i = 0;
  while (i < w.size()) {
    std::size_t len = 1;
    auto c = static_cast<unsigned char>(w[i]);
    if (c >= 0xF0) len = 4;
    else if (c >= 0xE0) len = 3;
    else if (c >= 0xC0) len = 2;
    len = std::min(len, w.size() - i);
    const bool first = i == 0, last = i + len == w.size();
    s.assign(w.substr(i, len));
    i += len;
    if (!first && options_.continuing_subword_prefix) s.insert(0, *options_.continuing_subword_prefix);
    if (last && options_.end_of_word_suffix) s += *options_.end_of_word_suffix;

    auto it = vocab_.find(s);
    if (it != vocab_.end()) {
      if (pending_unk) {
        add(*pending_unk);
        pending_unk.reset();
      }
      add(it->second);
      continue;
    }
    if (options_.byte_fallback) {
      bool all = true;
      for (unsigned char b : s) all = all && byte_ids_[b] >= 0;
      if (all) {
        // HF adds the bytes without flushing a pending unk first; keep its order.
        for (unsigned char b : s) add(byte_ids_[b]);
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk && !options_.fuse_unk) add(*pending_unk);
      pending_unk = *unk_id_;
    }
    // Without an unk token HF drops the character.
  }
  if (pending_unk) add(*pending_unk);

  struct Merge {
    int32_t pos, rank, new_id;
    bool operator<(const Merge& o) const {  // max-heap order: lowest rank, then lowest pos on top
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Merge> queue;
  auto find_merge = [&](int32_t a, int32_t b) -> const MergeValue* {
    auto it = merges_.find(pair_key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (std::size_t k = 0; k + 1 < symbols.size(); ++k)
    if (auto m = find_merge(symbols[k].id, symbols[k + 1].id))
      queue.push({static_cast<int32_t>(k), m->rank, m->new_id});
  while (!queue.empty()) {
    Merge top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.removed || left.next < 0) continue;
    const int32_t next_pos = left.next;
    const Symbol right = symbols[next_pos];
    auto m = find_merge(left.id, right.id);
    if (!m || m->new_id != top.new_id) continue;  // stale entry
    left.id = top.new_id;
    left.next = right.next;
    symbols[next_pos].removed = true;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0)
      if (auto pm = find_merge(symbols[left.prev].id, left.id)) queue.push({left.prev, pm->rank, pm->new_id});
    if (left.next >= 0)
      if (auto nm = find_merge(left.id, symbols[left.next].id)) queue.push({top.pos, nm->rank, nm->new_id});
  }
  for (const auto& sym : symbols)
    if (!sym.removed) out.push_back(sym.id);
}

}  // namespace dschat::tok
