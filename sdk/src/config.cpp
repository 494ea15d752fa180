#include "dschat/sdk/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>
#include <tuple>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "dschat/sdk/config_document.h"
#include "nesting_limits.h"

namespace dschat {

std::string SourceLocation::str() const { return fmt::format("{}:{}:{}", file, line, column); }

std::string printable_text(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  auto escape = [&](unsigned char c) { out += fmt::format("\\x{:02x}", c); };
  for (size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      if (c < 0x20 && c != '\t' && c != '\n') escape(c);
      else if (c == 0x7f) escape(c);
      else out += static_cast<char>(c);
      ++i;
      continue;
    }
    // Length and smallest code point of the sequence a lead byte starts (overlong forms are invalid).
    const size_t n = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    bool ok = n != 0 && i + n <= text.size();
    uint32_t cp = n == 2 ? c & 0x1f : n == 3 ? c & 0x0f : c & 0x07;
    for (size_t k = 1; ok && k < n; ++k) {
      const auto cc = static_cast<unsigned char>(text[i + k]);
      ok = (cc & 0xc0) == 0x80;
      cp = (cp << 6) | (cc & 0x3f);
    }
    ok = ok && !(n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) && !(n == 4 && (cp < 0x10000 || cp > 0x10ffff));
    if (!ok) {
      escape(c);
      ++i;
      continue;
    }
    out.append(text.substr(i, n));
    i += n;
  }
  return out;
}

ConfigError::ConfigError(SourceLocation where, std::string key_path, const std::string& message)
    : std::runtime_error(printable_text(key_path.empty() ? fmt::format("{}: {}", where.str(), message)
                                                         : fmt::format("{}: {}: {}", where.str(), key_path, message))),
      where_(std::move(where)),
      key_path_(std::move(key_path)),
      message_(printable_text(message)) {}

namespace {
std::vector<ConfigError> in_file_order(std::vector<ConfigError> errors) {
  std::stable_sort(errors.begin(), errors.end(), [](const ConfigError& a, const ConfigError& b) {
    return std::tie(a.where().file, a.where().line, a.where().column) <
           std::tie(b.where().file, b.where().line, b.where().column);
  });
  return errors;
}
}  // namespace

ConfigErrors::ConfigErrors(std::vector<ConfigError> errors)
    : ConfigError(in_file_order(errors).front()), errors_(in_file_order(std::move(errors))) {
  for (size_t i = 0; i < errors_.size(); ++i) text_ += (i ? "\n" : "") + std::string(errors_[i].what());
}

namespace {
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}
}  // namespace

std::string closest_match(std::string_view word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_distance = std::max<size_t>(2, word.size() / 3) + 1;
  for (const auto& candidate : candidates) {
    size_t d = edit_distance(word, candidate);
    if (d < best_distance) best_distance = d, best = candidate;
  }
  return best;
}

const char* toml_type_name(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table: return "table";
    case toml::node_type::array: return "array";
    case toml::node_type::string: return "string";
    case toml::node_type::integer: return "integer";
    case toml::node_type::floating_point: return "float";
    case toml::node_type::boolean: return "boolean";
    default: return "date/time";
  }
}

// ---------------------------------------------------------------------------------------------------------
// ConfigDocument

namespace {
SourceLocation location_from(const toml::source_region& region, const std::string& fallback_file) {
  return {region.path ? *region.path : fallback_file, static_cast<int>(region.begin.line),
          static_cast<int>(region.begin.column)};
}
}  // namespace

std::shared_ptr<ConfigDocument> ConfigDocument::parse_file(const std::filesystem::path& file) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec))
    throw ConfigError({file.string(), 0, 0}, "", "no such pipeline file");
  std::ifstream in(file, std::ios::binary);
  if (!in) throw ConfigError({file.string(), 0, 0}, "", "cannot open the pipeline file for reading");
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  return parse_string(text, file.string(), std::filesystem::absolute(file).parent_path());
}

std::shared_ptr<ConfigDocument> ConfigDocument::parse_string(std::string_view text, const std::string& file_label,
                                                             const std::filesystem::path& base_dir) {
  std::shared_ptr<ConfigDocument> doc(new ConfigDocument());
  doc->file_label_ = file_label;
  doc->base_dir_ = base_dir;
  // toml++ recurses per dotted-key part (50,000 parts overflowed the stack): refuse absurd nesting before it runs.
  if (auto deep = limits::toml_nesting_excess(text))
    throw ConfigError({file_label, static_cast<int>(deep->line), static_cast<int>(deep->column)}, "",
                      fmt::format("nesting deeper than {} levels (table-header and dotted-key parts, arrays and "
                                  "inline tables together); not a pipeline file",
                                  limits::kMaxTomlDepth));
  try {
    doc->table_ = toml::parse(text, file_label);
  } catch (const toml::parse_error& e) {
    throw ConfigError(location_from(e.source(), file_label), "",
                      fmt::format("TOML syntax error: {}", e.description()));
  }
  return doc;
}

SourceLocation ConfigDocument::location_of(const toml::node& node) const {
  if (auto it = overridden_.find(&node); it != overridden_.end()) return it->second;
  return location_from(node.source(), file_label_);
}

namespace {
std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::string current;
  for (char c : path) {
    if (c == '.') {
      parts.push_back(current);
      current.clear();
    } else {
      current += c;
    }
  }
  parts.push_back(current);
  return parts;
}
}  // namespace

void ConfigDocument::apply_override(const std::string& assignment) {
  SourceLocation where{"--set " + assignment, 1, 1};
  auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError(where, "", "expected key.path=value");
  std::string path = assignment.substr(0, eq);
  std::string value_text = assignment.substr(eq + 1);
  auto parts = split_path(path);
  for (const auto& p : parts)
    if (p.empty()) throw ConfigError(where, path, "empty component in key path");

  // Walk to the parent table; `stage.NAME` selects the [[stage]] element named NAME.
  toml::table* table = &table_;
  std::string walked;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    const std::string& part = parts[i];
    walked += (walked.empty() ? "" : ".") + part;
    toml::node* next = table->get(part);
    if (next == nullptr) {
      std::vector<std::string> present;
      for (auto&& [k, v] : *table) present.emplace_back(k.str());
      std::string hint = closest_match(part, present);
      throw ConfigError(where, path,
                        fmt::format("no table '{}' in the pipeline{}", walked,
                                    hint.empty() ? "" : fmt::format(" (did you mean '{}'?)", hint)));
    }
    if (auto* array = next->as_array()) {
      // an array of tables is addressed by element name: stage.rlhf
      const std::string& element = parts[++i];
      walked += "." + element;
      toml::table* found = nullptr;
      std::vector<std::string> names;
      for (auto& item : *array) {
        auto* t = item.as_table();
        if (t == nullptr) continue;
        auto name = (*t)["name"].value<std::string>();
        if (!name) continue;
        names.push_back(*name);
        if (*name == element) found = t;
      }
      if (found == nullptr) {
        std::string hint = closest_match(element, names);
        throw ConfigError(where, path,
                          fmt::format("no [[{}]] named '{}'{}", part, element,
                                      hint.empty() ? fmt::format(" (names: {})", fmt::join(names, ", "))
                                                   : fmt::format(" (did you mean '{}'?)", hint)));
      }
      if (i + 1 >= parts.size()) throw ConfigError(where, path, "a key path must end in a key, not a table");
      table = found;
      continue;
    }
    table = next->as_table();
    if (table == nullptr)
      throw ConfigError(where, path, fmt::format("'{}' is a value of type {}, not a table", walked, toml_type_name(*next)));
  }

  // Parse the value as TOML; a bare word that is not valid TOML is taken as a string (--set strategy.plugin=ddp).
  toml::table parsed;
  try {
    parsed = toml::parse("v = " + value_text);
  } catch (const toml::parse_error&) {
    bool bare_word = !value_text.empty() && std::all_of(value_text.begin(), value_text.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '/' || c == '.' ||
             c == '+' || c == ':';
    });
    if (!bare_word)
      throw ConfigError(where, path, fmt::format("value '{}' is not a TOML value (quote strings)", value_text));
    parsed.insert_or_assign("v", value_text);
  }
  const std::string& key = parts.back();
  if (auto* old = table->get(key)) overridden_.erase(old);
  auto [it, inserted] = table->insert_or_assign(key, std::move(*parsed.get("v")));
  (void)inserted;
  overridden_[&it->second] = where;
  if (auto* sub = it->second.as_table()) sub->for_each([&](auto& n) { overridden_[&n] = where; });
}

ConfigTable ConfigDocument::root() const {
  return ConfigTable(shared_from_this(), &table_, "");
}

std::string ConfigDocument::to_toml() const {
  std::ostringstream out;
  out << table_;
  return out.str();
}

// ---------------------------------------------------------------------------------------------------------
// ConfigTable

struct ConfigTable::State {
  std::string path;
  std::set<std::string, std::less<>> used;
  std::vector<ConfigTable> opened;  // sub-tables handed out, checked recursively for unknown keys
  bool skip_unknown_key_check = false;
};

namespace {
const toml::table& as_toml(const void* p) { return *static_cast<const toml::table*>(p); }
}  // namespace

ConfigTable::ConfigTable(std::shared_ptr<const ConfigDocument> document, const void* toml_table, std::string key_path)
    : document_(std::move(document)), table_(toml_table), state_(std::make_shared<State>()) {
  state_->path = std::move(key_path);
}

const std::string& ConfigTable::path() const { return state_->path; }
void ConfigTable::set_path(std::string key_path) { state_->path = std::move(key_path); }
const std::filesystem::path& ConfigTable::base_dir() const { return document_->base_dir(); }

std::string ConfigTable::key_path(std::string_view key) const {
  return state_->path.empty() ? std::string(key) : fmt::format("{}.{}", state_->path, key);
}

bool ConfigTable::has(std::string_view key) const { return as_toml(table_).contains(key); }

std::vector<std::string> ConfigTable::keys() const {
  std::vector<std::string> out;
  for (auto&& [k, v] : as_toml(table_)) out.emplace_back(k.str());
  return out;
}

const void* ConfigTable::node(std::string_view key) const {
  state_->used.emplace(key);
  return as_toml(table_).get(key);
}

void ConfigTable::mark_used(std::string_view key) const { state_->used.emplace(key); }

SourceLocation ConfigTable::location() const {
  return document_->location_of(as_toml(table_));
}

SourceLocation ConfigTable::location(std::string_view key) const {
  const auto* n = as_toml(table_).get(key);
  return n ? document_->location_of(*n) : location();
}

void ConfigTable::fail(std::string_view key, const std::string& message) const {
  throw ConfigError(location(key), key_path(key), message);
}

void ConfigTable::fail_here(const std::string& message) const {
  throw ConfigError(location(), state_->path, message);
}

namespace {
template <class T>
std::string describe(const T& v) {
  if constexpr (std::is_same_v<T, std::string>) return fmt::format("\"{}\"", v);
  else return fmt::format("{}", v);
}

std::string describe_node(const toml::node& n) {
  if (auto s = n.value_exact<std::string>()) return fmt::format("{} \"{}\"", toml_type_name(n), *s);
  if (auto i = n.value_exact<int64_t>()) return fmt::format("integer {}", *i);
  if (auto f = n.value_exact<double>()) return fmt::format("float {}", *f);
  if (auto b = n.value_exact<bool>()) return fmt::format("boolean {}", *b);
  return toml_type_name(n);
}
}  // namespace

#define DSCHAT_REQUIRE_PRESENT(fallback_expr)                                 \
  const auto* n = static_cast<const toml::node*>(node(key));                  \
  if (n == nullptr) {                                                         \
    if (fallback) return *fallback_expr;                                      \
    fail_here(fmt::format("missing required key '{}'", key));                 \
  }

std::string ConfigTable::get_string(std::string_view key, std::optional<std::string> fallback) const {
  DSCHAT_REQUIRE_PRESENT(std::move(fallback));
  auto v = n->value_exact<std::string>();
  if (!v) fail(key, fmt::format("expected a string, found {}", describe_node(*n)));
  return *v;
}

std::string ConfigTable::get_choice(std::string_view key, const std::vector<std::string>& choices,
                                    std::optional<std::string> fallback) const {
  std::string v = get_string(key, std::move(fallback));
  if (std::find(choices.begin(), choices.end(), v) == choices.end()) {
    std::string hint = closest_match(v, choices);
    fail(key, fmt::format("'{}' is not one of: {}{}", v, fmt::join(choices, ", "),
                          hint.empty() ? "" : fmt::format(" (did you mean '{}'?)", hint)));
  }
  return v;
}

int64_t ConfigTable::get_int(std::string_view key, std::optional<int64_t> fallback, std::optional<int64_t> min,
                             std::optional<int64_t> max) const {
  DSCHAT_REQUIRE_PRESENT(fallback);
  auto v = n->value_exact<int64_t>();
  if (!v) fail(key, fmt::format("expected an integer, found {}", describe_node(*n)));
  if (min && *v < *min) fail(key, fmt::format("must be >= {}, found {}", *min, *v));
  if (max && *v > *max) fail(key, fmt::format("must be <= {}, found {}", *max, *v));
  return *v;
}

double ConfigTable::get_float(std::string_view key, std::optional<double> fallback, std::optional<double> min,
                              std::optional<double> max) const {
  DSCHAT_REQUIRE_PRESENT(fallback);
  std::optional<double> v = n->value_exact<double>();
  if (!v) {
    if (auto i = n->value_exact<int64_t>()) v = static_cast<double>(*i);
  }
  if (!v) fail(key, fmt::format("expected a number, found {}", describe_node(*n)));
  // TOML has nan and inf literals; no option means either (a NaN learning rate trained a NaN model before).
  if (!std::isfinite(*v)) fail(key, fmt::format("must be a finite number, found {}", *v));
  if (min && *v < *min) fail(key, fmt::format("must be >= {}, found {}", *min, *v));
  if (max && *v > *max) fail(key, fmt::format("must be <= {}, found {}", *max, *v));
  return *v;
}

bool ConfigTable::get_bool(std::string_view key, std::optional<bool> fallback) const {
  DSCHAT_REQUIRE_PRESENT(fallback);
  auto v = n->value_exact<bool>();
  if (!v) fail(key, fmt::format("expected true or false, found {}", describe_node(*n)));
  return *v;
}

namespace {
template <class T>
std::vector<T> read_list(const ConfigTable& self, std::string_view key, const toml::node& n, const char* what) {
  const auto* array = n.as_array();
  if (array == nullptr) self.fail(key, fmt::format("expected an array of {}, found {}", what, describe_node(n)));
  std::vector<T> out;
  for (size_t i = 0; i < array->size(); ++i) {
    const toml::node& item = *array->get(i);
    std::optional<T> v = item.value_exact<T>();
    if constexpr (std::is_same_v<T, double>) {
      if (!v)
        if (auto as_int = item.value_exact<int64_t>()) v = static_cast<double>(*as_int);
    }
    if (!v)
      throw ConfigError(self.location(key), fmt::format("{}[{}]", self.key_path(key), i),
                        fmt::format("expected {}, found {}", what, describe_node(item)));
    if constexpr (std::is_same_v<T, double>) {
      if (!std::isfinite(*v))
        throw ConfigError(self.location(key), fmt::format("{}[{}]", self.key_path(key), i),
                          fmt::format("must be a finite number, found {}", *v));
    }
    out.push_back(*v);
  }
  return out;
}
}  // namespace

std::vector<std::string> ConfigTable::get_string_list(std::string_view key,
                                                      std::optional<std::vector<std::string>> fallback) const {
  DSCHAT_REQUIRE_PRESENT(std::move(fallback));
  return read_list<std::string>(*this, key, *n, "strings");
}

std::vector<int64_t> ConfigTable::get_int_list(std::string_view key,
                                               std::optional<std::vector<int64_t>> fallback) const {
  DSCHAT_REQUIRE_PRESENT(std::move(fallback));
  return read_list<int64_t>(*this, key, *n, "integers");
}

std::vector<double> ConfigTable::get_float_list(std::string_view key,
                                                std::optional<std::vector<double>> fallback) const {
  DSCHAT_REQUIRE_PRESENT(std::move(fallback));
  return read_list<double>(*this, key, *n, "numbers");
}

#undef DSCHAT_REQUIRE_PRESENT

namespace {
std::filesystem::path resolve(const std::filesystem::path& base, const std::string& text) {
  std::filesystem::path p(text);
  return p.is_absolute() ? p : base / p;
}
}  // namespace

std::filesystem::path ConfigTable::get_path(std::string_view key, bool must_exist,
                                            std::optional<std::string> fallback) const {
  std::string text = get_string(key, std::move(fallback));
  auto p = resolve(base_dir(), text);
  std::error_code ec;
  if (must_exist && !std::filesystem::exists(p, ec))
    fail(key, fmt::format("no such file or folder: {}", p.string()));
  return p;
}

std::vector<std::filesystem::path> ConfigTable::get_path_list(std::string_view key, bool must_exist) const {
  std::vector<std::filesystem::path> out;
  auto texts = get_string_list(key);
  for (size_t i = 0; i < texts.size(); ++i) {
    auto p = resolve(base_dir(), texts[i]);
    std::error_code ec;
    if (must_exist && !std::filesystem::exists(p, ec))
      throw ConfigError(location(key), fmt::format("{}[{}]", key_path(key), i),
                        fmt::format("no such file or folder: {}", p.string()));
    out.push_back(std::move(p));
  }
  return out;
}

std::optional<ConfigTable> ConfigTable::get_optional_table(std::string_view key) const {
  const auto* n = static_cast<const toml::node*>(node(key));
  if (n == nullptr) return std::nullopt;
  const auto* t = n->as_table();
  if (t == nullptr) fail(key, fmt::format("expected a table, found {}", describe_node(*n)));
  ConfigTable sub(document_, t, key_path(key));
  state_->opened.push_back(sub);
  return sub;
}

ConfigTable ConfigTable::get_table(std::string_view key) const {
  auto t = get_optional_table(key);
  if (!t) fail_here(fmt::format("missing required table '{}'", key));
  return *t;
}

std::vector<ConfigTable> ConfigTable::get_table_list(std::string_view key, bool required) const {
  const auto* n = static_cast<const toml::node*>(node(key));
  std::vector<ConfigTable> out;
  if (n == nullptr) {
    if (required) fail_here(fmt::format("missing required key '{}'", key));
    return out;
  }
  const auto* array = n->as_array();
  if (array == nullptr) fail(key, fmt::format("expected an array of tables, found {}", describe_node(*n)));
  for (size_t i = 0; i < array->size(); ++i) {
    const auto* t = array->get(i)->as_table();
    if (t == nullptr)
      throw ConfigError(document_->location_of(*array->get(i)), fmt::format("{}[{}]", key_path(key), i),
                        fmt::format("expected a table, found {}", describe_node(*array->get(i))));
    ConfigTable sub(document_, t, fmt::format("{}[{}]", key_path(key), i));
    state_->opened.push_back(sub);
    out.push_back(sub);
  }
  return out;
}

void ConfigTable::skip_unknown_key_check() const { state_->skip_unknown_key_check = true; }

bool ConfigTable::document_has(std::string_view dotted_path) const {
  return static_cast<bool>(document_->table().at_path(dotted_path));
}

void ConfigTable::collect_unknown_keys(std::vector<ConfigError>& out) const {
  if (state_->skip_unknown_key_check) return;
  std::vector<std::string> known(state_->used.begin(), state_->used.end());
  for (auto&& [k, v] : as_toml(table_)) {
    if (state_->used.count(k.str())) continue;
    std::string hint = closest_match(k.str(), known);
    out.emplace_back(document_->location_of(v), key_path(k.str()),
                     fmt::format("unknown key{}", hint.empty() ? fmt::format(" (known here: {})", fmt::join(known, ", "))
                                                                : fmt::format(" (did you mean '{}'?)", hint)));
  }
  for (const auto& sub : state_->opened) sub.collect_unknown_keys(out);
}

void ConfigTable::check_no_unknown_keys() const {
  std::vector<ConfigError> unknown;
  collect_unknown_keys(unknown);
  if (unknown.size() == 1) throw unknown.front();
  if (!unknown.empty()) throw ConfigErrors(std::move(unknown));
}

}  // namespace dschat
