// HubSettings from the variables huggingface_hub reads, in its order, and the `org/name[@revision]` id syntax.
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include "dschat/framework/hub.h"

namespace dschat {
namespace {

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

bool env_true(const char* name) {
  auto v = env(name);
  if (!v) return false;
  std::string up;
  for (char c : *v) up += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return up == "1" || up == "ON" || up == "YES" || up == "TRUE";
}

std::filesystem::path expand_user(const std::string& path) {
  if (path.rfind("~", 0) != 0) return path;
  auto home = env("HOME");
  return std::filesystem::path(home.value_or("/")) / path.substr(path.size() > 1 && path[1] == '/' ? 2 : 1);
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t start = 0;
  while (start < s.size() && std::isspace(static_cast<unsigned char>(s[start]))) ++start;
  return s.substr(start);
}

// huggingface_hub's validate_repo_id: word characters, '-', '.', no "--" or "..", no leading/trailing '-' '.'.
bool valid_name_part(std::string_view part) {
  if (part.empty() || part.size() > 96) return false;
  for (char c : part)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.') return false;
  if (part.front() == '-' || part.front() == '.' || part.back() == '-' || part.back() == '.') return false;
  return part.find("--") == std::string_view::npos && part.find("..") == std::string_view::npos;
}

}  // namespace

HubSettings HubSettings::from_environment() {
  HubSettings s;
  std::filesystem::path hf_home = env("HF_HOME") ? expand_user(*env("HF_HOME"))
                                                 : expand_user(env("XDG_CACHE_HOME").value_or("~/.cache")) / "huggingface";
  if (auto cache = env("HF_HUB_CACHE")) s.cache_dir = expand_user(*cache);
  else if (auto legacy = env("HUGGINGFACE_HUB_CACHE")) s.cache_dir = expand_user(*legacy);
  else s.cache_dir = hf_home / "hub";
  s.endpoint = env("HF_ENDPOINT").value_or("https://huggingface.co");
  while (!s.endpoint.empty() && s.endpoint.back() == '/') s.endpoint.pop_back();
  if (auto token = env("HF_TOKEN")) s.token = trim(*token);
  else if (auto legacy = env("HUGGING_FACE_HUB_TOKEN")) s.token = trim(*legacy);
  else {
    std::ifstream in(env("HF_TOKEN_PATH") ? expand_user(*env("HF_TOKEN_PATH")) : hf_home / "token");
    std::string line;
    if (in && std::getline(in, line) && !trim(line).empty()) s.token = trim(line);
  }
  s.offline = env_true("HF_HUB_OFFLINE") || env_true("TRANSFORMERS_OFFLINE");
  if (auto t = env("HF_HUB_DOWNLOAD_TIMEOUT")) s.timeout_s = std::max<int64_t>(1, std::atoll(t->c_str()));
  s.progress = [](const std::string& line) { std::cerr << line << "\n"; };
  return s;
}

std::optional<HubId> HubId::parse(std::string_view text) {
  HubId id;
  id.revision = "main";
  std::string_view repo = text;
  if (auto at = text.find('@'); at != std::string_view::npos) {
    id.revision = std::string(text.substr(at + 1));
    repo = text.substr(0, at);
    if (id.revision.empty() || id.revision.find("..") != std::string::npos) return std::nullopt;
    for (char c : id.revision)
      if (std::isspace(static_cast<unsigned char>(c)) || std::iscntrl(static_cast<unsigned char>(c))) return std::nullopt;
  }
  const size_t slash = repo.find('/');
  if (slash == std::string_view::npos || repo.find('/', slash + 1) != std::string_view::npos) return std::nullopt;
  if (!valid_name_part(repo.substr(0, slash)) || !valid_name_part(repo.substr(slash + 1))) return std::nullopt;
  id.repo = std::string(repo);
  return id;
}

std::string HubId::folder_name() const {
  std::string name = "models--" + repo;
  name.replace(name.find('/'), 1, "--");
  return name;
}

std::string HubId::str() const { return revision == "main" ? repo : repo + "@" + revision; }

}  // namespace dschat
