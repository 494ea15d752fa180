#pragma once
// Internal: bounds on how deeply an untrusted JSON or TOML text may nest, checked by a cheap scan before the text
// reaches its parser. nlohmann parses iteratively, but dump(), copies and comparisons of what it built recurse, as
// do the SDK's own walkers; toml++ recurses while building a dotted key's tables and again when destroying them.
// A file nested 100,000 deep would overflow the stack somewhere (a crash, not an error), so it is refused here.
// Header-only, so the host (framework/src/data/jsonl.cpp) and the fuzz targets share it without an export.
#include <cstddef>
#include <optional>
#include <string_view>
#include <vector>

namespace dschat::limits {

// Far beyond any real tokenizer.json, config.json, safetensors header or dataset row (all nest under ~10 deep).
inline constexpr std::size_t kMaxJsonDepth = 256;
// Tables a TOML key may sit in: table-header parts + dotted-key parts + enclosing arrays and inline tables
// (a pipeline file uses 4 at most; toml++ alone allows 256 nested arrays/inline tables but not dotted parts).
inline constexpr std::size_t kMaxTomlDepth = 128;

// Where a text first nests deeper than its limit: 1-based line and column of the offending byte.
struct NestingExcess {
  std::size_t offset = 0;
  std::size_t line = 1;
  std::size_t column = 1;
};

namespace detail {
inline NestingExcess locate(std::string_view text, std::size_t offset) {
  NestingExcess at{offset, 1, 1};
  for (std::size_t i = 0; i < offset && i < text.size(); ++i) {
    if (text[i] == '\n') ++at.line, at.column = 1;
    else ++at.column;
  }
  return at;
}
}  // namespace detail

// The first '[' or '{' (outside strings) that opens a level deeper than max_depth; nullopt if none does.
// Not a validator: unbalanced or otherwise broken JSON is left for the parser to report.
inline std::optional<NestingExcess> json_nesting_excess(std::string_view text, std::size_t max_depth = kMaxJsonDepth) {
  std::size_t depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return detail::locate(text, i);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return std::nullopt;
}

// The first key part, table-header part, array or inline table (outside strings and comments) that puts a value
// more than max_depth tables/arrays deep; nullopt if none does. Depths: the root table is 0, `a = 1` and [a] are
// 1, `a.b = 1`, [a.b] and a key in [a] are 2, an element of `a = [..]` is 2. Like the JSON scan, it leaves syntax
// to toml++.
inline std::optional<NestingExcess> toml_nesting_excess(std::string_view text, std::size_t max_depth = kMaxTomlDepth) {
  struct Open {  // an open array ('[') or inline table ('{') and the depth of that value
    char kind;
    std::size_t depth;
  };
  std::vector<Open> open;
  std::size_t header_depth = 0;  // parts of the last [table] / [[array]] header
  std::size_t base = 0;          // depth of the table the key being read belongs to
  std::size_t parts = 0;         // parts of that key (or of the header being read) so far
  std::size_t depth = 0;         // depth of the value being read
  enum { kKey, kHeader, kValue } mode = kKey;
  const std::size_t n = text.size();
  std::optional<NestingExcess> excess;
  auto reach = [&](std::size_t d, std::size_t i) {
    if (d > max_depth && !excess) excess = detail::locate(text, i);
    return !excess;
  };
  auto start_key = [&](std::size_t table_depth) { mode = kKey, base = table_depth, parts = 0; };
  for (std::size_t i = 0; i < n; ++i) {
    const char c = text[i];
    if (c == '#') {  // a comment, to the end of the line
      while (i + 1 < n && text[i + 1] != '\n') ++i;
      continue;
    }
    if (c == '"' || c == '\'') {  // a string (basic or literal, one- or multi-line), skipped whole
      const std::size_t at = i;
      if (i + 2 < n && text[i + 1] == c && text[i + 2] == c) {
        for (i += 3; i < n && !(text[i] == c && i + 2 < n && text[i + 1] == c && text[i + 2] == c); ++i)
          if (c == '"' && text[i] == '\\') ++i;
        i += 2;
        while (i + 1 < n && text[i + 1] == c) ++i;  // """a"""" ends with a quote inside the string
      } else {
        for (++i; i < n && text[i] != c && text[i] != '\n'; ++i)
          if (c == '"' && text[i] == '\\') ++i;
      }
      if (mode != kValue && parts == 0 && !reach(base + (parts = 1), at)) return excess;  // a quoted key part
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\r') continue;
    if (c == '\n') {
      if (open.empty()) start_key(header_depth);
      continue;
    }
    if (mode == kHeader) {
      if (c == '.') {
        if (!reach(++parts, i)) return excess;
      } else if (c == ']') {
        header_depth = parts;
        if (i + 1 < n && text[i + 1] == ']') ++i;
        mode = kValue;  // nothing but a comment may follow
      } else if (parts == 0 && c != '[') {
        parts = 1;
      }
      continue;
    }
    if (mode == kKey) {
      if (c == '[' && open.empty() && parts == 0) {  // [table] or [[array of tables]]
        mode = kHeader, base = 0, parts = 0;
      } else if (c == '=') {
        mode = kValue, depth = base + parts;
      } else if (c == '}' && !open.empty() && open.back().kind == '{') {  // {} or a trailing comma
        depth = open.back().depth;
        open.pop_back();
        mode = kValue;
      } else if (c == '.') {
        if (!reach(base + ++parts, i)) return excess;
      } else if (parts == 0) {
        if (!reach(base + (parts = 1), i)) return excess;
      }
      continue;
    }
    // In a value.
    if (c == '[') {
      if (!reach(depth + 1, i)) return excess;
      open.push_back({'[', depth});
      depth += 1;
    } else if (c == '{') {
      if (!reach(depth + 1, i)) return excess;
      open.push_back({'{', depth});
      start_key(depth);
    } else if ((c == ']' || c == '}') && !open.empty()) {
      depth = open.back().depth;
      open.pop_back();
    } else if (c == ',' && !open.empty()) {
      if (open.back().kind == '{') start_key(open.back().depth);
      else depth = open.back().depth + 1;
    }
  }
  return std::nullopt;
}

}  // namespace dschat::limits
