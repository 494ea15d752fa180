#pragma once
// Internal to the tokenizer: UTF-8 and the Unicode properties HF's regexes/normalizers use.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dschat::tok {

struct CodepointRange {
  char32_t first, last;
};
struct LowerMapping {
  char32_t cp;
  char32_t lower[3];  // 0-terminated when shorter
};

namespace tables {
extern const CodepointRange letters[];
extern const std::size_t letters_size;
extern const CodepointRange numbers[];
extern const std::size_t numbers_size;
extern const CodepointRange white_space[];
extern const std::size_t white_space_size;
extern const LowerMapping lowercase[];
extern const std::size_t lowercase_size;
}  // namespace tables

enum CharClass : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 4 };

// Class of a code point (O(1) below U+30000, binary search above).
uint8_t char_class(char32_t cp);
inline bool is_letter(char32_t cp) { return char_class(cp) & kLetter; }
inline bool is_number(char32_t cp) { return char_class(cp) & kNumber; }
inline bool is_space(char32_t cp) { return char_class(cp) & kSpace; }

// Decodes one code point at s[i] (which must be valid UTF-8: std::string inputs are validated up front) and
// advances i.
inline char32_t next_cp(std::string_view s, std::size_t& i) {
  auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) {
    ++i;
    return c;
  }
  int n = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1;
  char32_t cp = c & (0x3F >> n);
  for (int k = 1; k <= n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n + 1;
  return cp;
}
void append_utf8(std::string& out, char32_t cp);

// True when s is well-formed UTF-8 (no surrogates, overlongs or truncated sequences).
bool valid_utf8(std::string_view s);
// Rust's String::from_utf8_lossy: each maximal ill-formed subpart becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// Full per-character lowercase (Rust char::to_lowercase, as HF's Lowercase normalizer applies it).
std::string to_lower(std::string_view s);

}  // namespace dschat::tok
