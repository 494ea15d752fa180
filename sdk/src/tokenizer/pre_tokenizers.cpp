// Pre-tokenizers (ByteLevel, Metaspace, Split, WhitespaceSplit, Sequence) and the regex scanners they use.
#include <array>

#include "pipeline.h"
#include "unicode.h"

namespace dschat::tok {

void split_piece(const Piece& piece, const Matches& matches, SplitBehavior behavior, bool invert,
                 std::vector<Piece>& out) {
  struct Seg {
    std::size_t start, end;
    bool is_match;
  };
  const std::size_t n = piece.text.size();
  std::vector<Seg> segs;
  segs.reserve(matches.size() * 2 + 1);
  std::size_t prev = 0;
  for (auto [s, e] : matches) {
    if (s == e) continue;
    if (s > prev) segs.push_back({prev, s, false});
    segs.push_back({s, e, true});
    prev = e;
  }
  if (prev < n) segs.push_back({prev, n, false});
  if (invert)
    for (auto& s : segs) s.is_match = !s.is_match;

  // HF's fold over the segments for each behaviour; `remove` marks the parts Removed drops.
  std::vector<Seg> parts;
  parts.reserve(segs.size());
  switch (behavior) {
    case SplitBehavior::Removed:
      parts = segs;
      break;
    case SplitBehavior::Isolated:
      for (auto s : segs) parts.push_back({s.start, s.end, false});
      break;
    case SplitBehavior::Contiguous: {
      bool previous = false;
      for (auto s : segs) {
        if (s.is_match == previous && !parts.empty())
          parts.back().end = s.end;
        else
          parts.push_back({s.start, s.end, false});
        previous = s.is_match;
      }
      break;
    }
    case SplitBehavior::MergedWithPrevious: {
      bool previous = false;
      for (auto s : segs) {
        if (s.is_match && !previous && !parts.empty())
          parts.back().end = s.end;
        else
          parts.push_back({s.start, s.end, false});
        previous = s.is_match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool previous = false;
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->is_match && !previous && !parts.empty())
          parts.back().start = it->start;
        else
          parts.push_back({it->start, it->end, false});
        previous = it->is_match;
      }
      std::reverse(parts.begin(), parts.end());
      break;
    }
  }
  for (const auto& p : parts) {
    if (p.is_match || p.start == p.end) continue;
    out.push_back({piece.text.substr(p.start, p.end - p.start), piece.at_origin && p.start == 0});
  }
}

// ---- regex scanners --------------------------------------------------------------------------------------

namespace {

constexpr std::string_view kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kBloomPattern = " ?[^(\\s|[.,!?…。，、।۔،])]+";

struct Text {
  std::vector<char32_t> cp;
  std::vector<uint8_t> cls;
  std::vector<std::size_t> offset;  // byte offset of each code point, plus the end
  explicit Text(std::string_view s) {
    cp.reserve(s.size());
    offset.reserve(s.size() + 1);
    std::size_t i = 0;
    while (i < s.size()) {
      offset.push_back(i);
      char32_t c = next_cp(s, i);
      cp.push_back(c);
      cls.push_back(char_class(c));
    }
    offset.push_back(s.size());
  }
  std::size_t size() const { return cp.size(); }
  bool letter(std::size_t i) const { return cls[i] & kLetter; }
  bool number(std::size_t i) const { return cls[i] & kNumber; }
  bool space(std::size_t i) const { return cls[i] & kSpace; }
  bool other(std::size_t i) const { return cls[i] == 0; }  // [^\s\p{L}\p{N}]
};

// `'s|'t|'re|'ve|'m|'ll|'d`, optionally case-insensitive (Oniguruma folds U+017F long s to s).
std::size_t contraction(const Text& t, std::size_t i, bool ignore_case) {
  const std::size_t n = t.size();
  if (t.cp[i] != U'\'' || i + 1 >= n) return 0;
  auto low = [&](std::size_t k) -> char32_t {
    char32_t c = t.cp[k];
    if (!ignore_case) return c;
    if (c >= U'A' && c <= U'Z') return c + 32;
    if (c == 0x17F) return U's';
    return c;
  };
  char32_t a = low(i + 1);
  if (a == U's' || a == U't' || a == U'm' || a == U'd') return 2;
  if (i + 2 < n) {
    char32_t b = low(i + 2);
    if ((a == U'r' && b == U'e') || (a == U'v' && b == U'e') || (a == U'l' && b == U'l')) return 3;
  }
  return 0;
}

// `\s+(?!\S)|\s+` at a whitespace position.
std::size_t trailing_space(const Text& t, std::size_t i) {
  std::size_t k = i;
  while (k < t.size() && t.space(k)) ++k;
  if (k == t.size() || k - i == 1) return k - i;
  return k - i - 1;  // leave the last space to the word that follows
}

template <class Pred>
std::size_t run(const Text& t, std::size_t k, Pred pred) {
  while (k < t.size() && pred(k)) ++k;
  return k;
}

std::size_t scan_gpt2(const Text& t, std::size_t i) {
  if (std::size_t c = contraction(t, i, false)) return c;
  const std::size_t n = t.size();
  std::size_t j = t.cp[i] == U' ' ? i + 1 : i;
  if (j < n) {
    if (t.letter(j)) return run(t, j, [&](std::size_t k) { return t.letter(k); }) - i;
    if (t.number(j)) return run(t, j, [&](std::size_t k) { return t.number(k); }) - i;
    if (t.other(j)) return run(t, j, [&](std::size_t k) { return t.other(k); }) - i;
  }
  return trailing_space(t, i);  // t.cp[i] is whitespace here
}

std::size_t scan_llama3(const Text& t, std::size_t i) {
  if (std::size_t c = contraction(t, i, true)) return c;
  const std::size_t n = t.size();
  const char32_t c = t.cp[i];
  auto newline = [&](std::size_t k) { return t.cp[k] == U'\r' || t.cp[k] == U'\n'; };
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (t.letter(i)) return run(t, i, [&](std::size_t k) { return t.letter(k); }) - i;
  if (!newline(i) && !t.number(i) && i + 1 < n && t.letter(i + 1))
    return run(t, i + 1, [&](std::size_t k) { return t.letter(k); }) - i;
  // \p{N}{1,3}
  if (t.number(i)) {
    std::size_t k = i;
    while (k < n && k - i < 3 && t.number(k)) ++k;
    return k - i;
  }
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  std::size_t j = (c == U' ' && i + 1 < n && t.other(i + 1)) ? i + 1 : i;
  if (t.other(j)) {
    std::size_t k = run(t, j, [&](std::size_t q) { return t.other(q); });
    return run(t, k, newline) - i;
  }
  // \s*[\r\n]+ : up to the end of the last newline in this whitespace run
  std::size_t k = run(t, i, [&](std::size_t q) { return t.space(q); });
  for (std::size_t p = k; p > i; --p)
    if (newline(p - 1)) return p - i;
  return trailing_space(t, i);
}

bool bloom_allowed(const Text& t, std::size_t k) {
  if (t.space(k)) return false;
  switch (t.cp[k]) {
    case U'(': case U')': case U'|': case U'.': case U',': case U'!': case U'?':
    case U'…': case U'。': case U'，': case U'、': case U'।': case U'۔': case U'،':
      return false;
    default:
      return true;
  }
}

std::size_t scan_bloom(const Text& t, std::size_t i) {
  std::size_t j = (t.cp[i] == U' ' && i + 1 < t.size() && bloom_allowed(t, i + 1)) ? i + 1 : i;
  if (!bloom_allowed(t, j)) return 0;
  return run(t, j, [&](std::size_t k) { return bloom_allowed(t, k); }) - i;
}

}  // namespace

std::optional<KnownRegex> known_regex(std::string_view pattern) {
  if (pattern == kGpt2Pattern) return KnownRegex::Gpt2;
  if (pattern == kLlama3Pattern) return KnownRegex::Llama3;
  if (pattern == kBloomPattern) return KnownRegex::Bloom;
  return std::nullopt;
}

Matches find_regex(KnownRegex re, std::string_view text) {
  Text t(text);
  Matches out;
  std::size_t i = 0;
  while (i < t.size()) {
    std::size_t len = re == KnownRegex::Gpt2     ? scan_gpt2(t, i)
                      : re == KnownRegex::Llama3 ? scan_llama3(t, i)
                                                 : scan_bloom(t, i);
    if (len == 0) {
      ++i;
      continue;
    }
    out.emplace_back(t.offset[i], t.offset[i + len]);
    i += len;
  }
  return out;
}

// ---- byte-level alphabet ---------------------------------------------------------------------------------

namespace {
struct ByteTables {
  std::array<std::string, 256> to_char;
  std::array<int, 512> to_byte;  // every byte character is below U+0144
  ByteTables() {
    to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++);
      append_utf8(to_char[b], cp);
      to_byte[cp] = b;
    }
  }
};
const ByteTables& byte_tables() {
  static const ByteTables t;
  return t;
}
}  // namespace

const std::string& byte_to_char(uint8_t b) { return byte_tables().to_char[b]; }
int char_to_byte(char32_t cp) { return cp < 512 ? byte_tables().to_byte[cp] : -1; }

// ---- pre-tokenizers --------------------------------------------------------------------------------------

namespace {

class ByteLevel final : public PreTokenizer {
 public:
  ByteLevel(bool add_prefix_space, bool use_regex) : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces.size() * 4);
    for (auto& p : pieces) {
      if (add_prefix_space_ && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, 1, ' ');
      if (use_regex_)
        split_piece(p, find_regex(KnownRegex::Gpt2, p.text), SplitBehavior::Isolated, false, out);
      else if (!p.text.empty())
        out.push_back(std::move(p));
    }
    const auto& tables = byte_tables();
    for (auto& p : out) {
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      for (unsigned char b : p.text) mapped += tables.to_char[b];
      p.text = std::move(mapped);
    }
    pieces = std::move(out);
  }

 private:
  bool add_prefix_space_, use_regex_;
};

class Metaspace final : public PreTokenizer {
 public:
  Metaspace(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    for (auto& p : pieces) {
      std::string s;
      s.reserve(p.text.size() + replacement_.size());
      for (char c : p.text) {
        if (c == ' ')
          s += replacement_;
        else
          s.push_back(c);
      }
      bool starts = s.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts && (scheme_ == PrependScheme::Always || (scheme_ == PrependScheme::First && p.at_origin)))
        s.insert(0, replacement_);
      Piece q{std::move(s), p.at_origin};
      if (!split_) {
        if (!q.text.empty()) out.push_back(std::move(q));
        continue;
      }
      Matches m;
      for (std::size_t pos = q.text.find(replacement_); pos != std::string::npos;
           pos = q.text.find(replacement_, pos + replacement_.size()))
        m.emplace_back(pos, pos + replacement_.size());
      split_piece(q, m, SplitBehavior::MergedWithNext, false, out);
    }
    pieces = std::move(out);
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class SplitRegex final : public PreTokenizer {
 public:
  SplitRegex(KnownRegex re, SplitBehavior behavior, bool invert) : re_(re), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    for (const auto& p : pieces) split_piece(p, find_regex(re_, p.text), behavior_, invert_, out);
    pieces = std::move(out);
  }

 private:
  KnownRegex re_;
  SplitBehavior behavior_;
  bool invert_;
};

class SplitString final : public PreTokenizer {
 public:
  SplitString(std::string pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    for (const auto& p : pieces) {
      Matches m;
      if (!pattern_.empty())
        for (std::size_t pos = p.text.find(pattern_); pos != std::string::npos;
             pos = p.text.find(pattern_, pos + pattern_.size()))
          m.emplace_back(pos, pos + pattern_.size());
      split_piece(p, m, behavior_, invert_, out);
    }
    pieces = std::move(out);
  }

 private:
  std::string pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class WhitespaceSplit final : public PreTokenizer {
 public:
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    for (const auto& p : pieces) {
      Matches m;
      std::size_t i = 0;
      while (i < p.text.size()) {
        std::size_t start = i;
        if (is_space(next_cp(p.text, i))) m.emplace_back(start, i);
      }
      split_piece(p, m, SplitBehavior::Removed, false, out);
    }
    pieces = std::move(out);
  }
};

class PreTokenizerSequence final : public PreTokenizer {
 public:
  explicit PreTokenizerSequence(std::vector<std::unique_ptr<PreTokenizer>> parts) : parts_(std::move(parts)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (const auto& p : parts_) p->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_byte_level(bool add_prefix_space, bool use_regex) {
  return std::make_unique<ByteLevel>(add_prefix_space, use_regex);
}
std::unique_ptr<PreTokenizer> make_metaspace(std::string replacement, PrependScheme scheme, bool split) {
  return std::make_unique<Metaspace>(std::move(replacement), scheme, split);
}
std::unique_ptr<PreTokenizer> make_split_regex(KnownRegex re, SplitBehavior behavior, bool invert) {
  return std::make_unique<SplitRegex>(re, behavior, invert);
}
std::unique_ptr<PreTokenizer> make_split_string(std::string pattern, SplitBehavior behavior, bool invert) {
  return std::make_unique<SplitString>(std::move(pattern), behavior, invert);
}
std::unique_ptr<PreTokenizer> make_whitespace_split() { return std::make_unique<WhitespaceSplit>(); }
std::unique_ptr<PreTokenizer> make_pre_tokenizer_sequence(std::vector<std::unique_ptr<PreTokenizer>> parts) {
  return std::make_unique<PreTokenizerSequence>(std::move(parts));
}

}  // namespace dschat::tok
