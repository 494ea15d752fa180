#include "unicode.h"

#include <algorithm>
#include <vector>

namespace dschat::tok {
namespace {

constexpr char32_t kDenseLimit = 0x30000;  // BMP + planes 1-2: every code point real text uses

bool in_ranges(const CodepointRange* r, std::size_t n, char32_t cp) {
  auto it = std::upper_bound(r, r + n, cp, [](char32_t v, const CodepointRange& x) { return v < x.first; });
  return it != r && cp <= (it - 1)->last;
}

uint8_t slow_class(char32_t cp) {
  uint8_t c = 0;
  if (in_ranges(tables::letters, tables::letters_size, cp)) c |= kLetter;
  if (in_ranges(tables::numbers, tables::numbers_size, cp)) c |= kNumber;
  if (in_ranges(tables::white_space, tables::white_space_size, cp)) c |= kSpace;
  return c;
}

const std::vector<uint8_t>& dense_table() {
  static const std::vector<uint8_t> table = [] {
    std::vector<uint8_t> t(kDenseLimit, 0);
    auto fill = [&](const CodepointRange* r, std::size_t n, uint8_t bit) {
      for (std::size_t i = 0; i < n && r[i].first < kDenseLimit; ++i)
        for (char32_t cp = r[i].first; cp <= r[i].last && cp < kDenseLimit; ++cp) t[cp] |= bit;
    };
    fill(tables::letters, tables::letters_size, kLetter);
    fill(tables::numbers, tables::numbers_size, kNumber);
    fill(tables::white_space, tables::white_space_size, kSpace);
    return t;
  }();
  return table;
}

}  // namespace

uint8_t char_class(char32_t cp) {
  if (cp < kDenseLimit) {
    static const uint8_t* table = dense_table().data();
    return table[cp];
  }
  return slow_class(cp);
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

namespace {
// Length of the well-formed sequence at s[i], or 0; `valid_prefix` gets how many bytes form a maximal
// prefix of some well-formed sequence (Unicode's "maximal subpart", what Rust replaces with one U+FFFD).
std::size_t sequence_at(std::string_view s, std::size_t i, std::size_t& valid_prefix) {
  auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = b(i);
  valid_prefix = 1;
  if (c < 0x80) return 1;
  std::size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    need = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (std::size_t k = 1; k < need; ++k) {
    if (i + k >= s.size()) return 0;
    unsigned char x = b(i + k);
    bool ok = k == 1 ? (x >= lo && x <= hi) : (x >= 0x80 && x <= 0xBF);
    if (!ok) return 0;
    valid_prefix = k + 1;
  }
  return need;
}
}  // namespace

bool valid_utf8(std::string_view s) {
  std::size_t i = 0, prefix = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    std::size_t n = sequence_at(s, i, prefix);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  std::size_t i = 0, prefix = 0;
  while (i < s.size()) {
    std::size_t n = sequence_at(s, i, prefix);
    if (n) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      i += prefix;
    }
  }
  return out;
}

std::string to_lower(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c));
      ++i;
      continue;
    }
    char32_t cp = next_cp(s, i);
    const LowerMapping* end = tables::lowercase + tables::lowercase_size;
    auto it = std::lower_bound(tables::lowercase, end, cp, [](const LowerMapping& m, char32_t v) { return m.cp < v; });
    if (it != end && it->cp == cp) {
      for (char32_t l : it->lower)
        if (l) append_utf8(out, l);
    } else {
      append_utf8(out, cp);
    }
  }
  return out;
}

}  // namespace dschat::tok
