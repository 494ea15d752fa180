#pragma once
// Host-side: a parsed pipeline file and its command-line overrides. Plugins never include this header
// (it pulls in toml++); they see ConfigTable only.
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <toml++/toml.h>

#include "dschat/sdk/config.h"

namespace dschat {

class DSCHAT_SDK_API ConfigDocument : public std::enable_shared_from_this<ConfigDocument> {
 public:
  // Parses `file`; a syntax error becomes a ConfigError at the parser's line:column.
  static std::shared_ptr<ConfigDocument> parse_file(const std::filesystem::path& file);
  static std::shared_ptr<ConfigDocument> parse_string(std::string_view text, const std::string& file_label,
                                                      const std::filesystem::path& base_dir);

  // Applies `key.path=value` (value in TOML syntax; a bare word is taken as a string). In the path,
  // `stage.NAME` addresses the [[stage]] whose name is NAME. The key's parent must exist; the key need not.
  void apply_override(const std::string& assignment);

  ConfigTable root() const;
  const std::string& file_label() const { return file_label_; }
  const std::filesystem::path& base_dir() const { return base_dir_; }
  const toml::table& table() const { return table_; }
  std::string to_toml() const;  // the resolved document, as written to the run folder

  // Where a node came from: the file position, or the --set argument that put it there.
  SourceLocation location_of(const toml::node& node) const;

 private:
  ConfigDocument() = default;
  toml::table table_;
  std::string file_label_;
  std::filesystem::path base_dir_;
  std::map<const toml::node*, SourceLocation> overridden_;
};

const char* toml_type_name(const toml::node& node);

}  // namespace dschat
