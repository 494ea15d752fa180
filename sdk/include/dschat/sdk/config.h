#pragma once
// Typed, validated access to one table of a pipeline file. The host and every plugin read their options
// through this class, so that every configuration error names the file, line:column and key path the same way.
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

struct SourceLocation {
  std::string file;  // pipeline file, or "--set" for a command-line override
  int line = 0;
  int column = 0;
  std::string str() const;  // "file:line:col"
};

// `text` safe to print: valid UTF-8 passes unchanged; each byte of an invalid sequence (and control characters
// other than tab and newline) becomes \xNN, so a message quoting a broken file never writes raw bytes to a terminal.
DSCHAT_SDK_API std::string printable_text(std::string_view text);

// A configuration problem: exit code 2 at the CLI. what() is the full "file:line:col: key.path: message".
class DSCHAT_SDK_API ConfigError : public std::runtime_error {
 public:
  ConfigError(SourceLocation where, std::string key_path, const std::string& message);
  const SourceLocation& where() const { return where_; }
  const std::string& key_path() const { return key_path_; }
  const std::string& message() const { return message_; }

 private:
  SourceLocation where_;
  std::string key_path_;
  std::string message_;
};

// Several problems found in one pass (validation goes on after the first, so the user fixes them all at once),
// in file order. It is the first of them as a ConfigError; what() lists all, one per line.
class DSCHAT_SDK_API ConfigErrors : public ConfigError {
 public:
  explicit ConfigErrors(std::vector<ConfigError> errors);  // non-empty; sorted here by file, line, column
  const std::vector<ConfigError>& errors() const { return errors_; }
  const char* what() const noexcept override { return text_.c_str(); }

 private:
  std::vector<ConfigError> errors_;
  std::string text_;
};

// Closest candidate by edit distance, or "" when nothing is close enough to suggest.
DSCHAT_SDK_API std::string closest_match(std::string_view word, const std::vector<std::string>& candidates);

class ConfigDocument;  // the parsed file, owned by the host

class DSCHAT_SDK_API ConfigTable {
 public:
  // Host only: wraps a toml::table (passed as void* to keep toml++ out of plugin builds) of `document`.
  ConfigTable(std::shared_ptr<const ConfigDocument> document, const void* toml_table, std::string key_path);

  bool has(std::string_view key) const;
  std::vector<std::string> keys() const;

  // Getters: a missing key without a fallback is an error; a present key of the wrong type always is.
  std::string get_string(std::string_view key, std::optional<std::string> fallback = std::nullopt) const;
  std::string get_choice(std::string_view key, const std::vector<std::string>& choices,
                         std::optional<std::string> fallback = std::nullopt) const;
  int64_t get_int(std::string_view key, std::optional<int64_t> fallback = std::nullopt,
                  std::optional<int64_t> min = std::nullopt, std::optional<int64_t> max = std::nullopt) const;
  double get_float(std::string_view key, std::optional<double> fallback = std::nullopt,
                   std::optional<double> min = std::nullopt, std::optional<double> max = std::nullopt) const;
  bool get_bool(std::string_view key, std::optional<bool> fallback = std::nullopt) const;
  std::vector<std::string> get_string_list(std::string_view key,
                                           std::optional<std::vector<std::string>> fallback = std::nullopt) const;
  std::vector<int64_t> get_int_list(std::string_view key,
                                    std::optional<std::vector<int64_t>> fallback = std::nullopt) const;
  std::vector<double> get_float_list(std::string_view key,
                                     std::optional<std::vector<double>> fallback = std::nullopt) const;
  // A path relative to the pipeline file's folder (absolute paths pass through); must exist when `must_exist`.
  std::filesystem::path get_path(std::string_view key, bool must_exist,
                                 std::optional<std::string> fallback = std::nullopt) const;
  std::vector<std::filesystem::path> get_path_list(std::string_view key, bool must_exist) const;

  ConfigTable get_table(std::string_view key) const;  // required sub-table (or inline table)
  std::optional<ConfigTable> get_optional_table(std::string_view key) const;
  // An array of tables, e.g. [[stage]] or hooks = [{...}, {...}]; each element's path is key[i].
  std::vector<ConfigTable> get_table_list(std::string_view key, bool required = false) const;
  // Whether the whole document has `dotted_path` (e.g. "data.pretraining"): lets a plugin check what it needs
  // from other tables (cross-stage needs) at validation, without reading them.
  bool document_has(std::string_view dotted_path) const;

  // Marks a key as known without reading it (e.g. handed to another component).
  void mark_used(std::string_view key) const;

  // Every key present but never read by the code, in this table and in sub-tables it opened, is an error
  // with a "did you mean" drawn from the keys the code did read.
  void check_no_unknown_keys() const;
  // After this table's reader failed midway: its unread keys are not "unknown", so the check skips it.
  void skip_unknown_key_check() const;

  [[noreturn]] void fail(std::string_view key, const std::string& message) const;
  [[noreturn]] void fail_here(const std::string& message) const;  // about the table itself
  std::string key_path(std::string_view key) const;
  const std::string& path() const;  // this table's own key path, "" for the root
  SourceLocation location(std::string_view key) const;
  SourceLocation location() const;
  const std::filesystem::path& base_dir() const;  // folder of the pipeline file
  // Re-labels this table's path in messages, e.g. "stage.rlhf" instead of "stage[2]".
  void set_path(std::string key_path);

 private:
  struct State;
  void collect_unknown_keys(std::vector<ConfigError>& out) const;
  const void* node(std::string_view key) const;
  std::shared_ptr<const ConfigDocument> document_;
  const void* table_;
  std::shared_ptr<State> state_;
};

}  // namespace dschat
