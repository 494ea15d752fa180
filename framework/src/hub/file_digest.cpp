#include "file_digest.h"

#include <cctype>
#include <fstream>
#include <memory>
#include <vector>

#include <fmt/format.h>
#include <openssl/evp.h>

#include "dschat/framework/hub.h"

namespace dschat::hub {
namespace {

bool all_hex(const std::string& s) {
  for (char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

std::string digest_hex(const std::filesystem::path& file, const EVP_MD* md, const std::string& prefix) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), md, nullptr) != 1) throw HubError("OpenSSL: cannot start a digest");
  EVP_DigestUpdate(ctx.get(), prefix.data(), prefix.size());
  std::ifstream in(file, std::ios::binary);
  if (!in) throw HubError(fmt::format("cannot read {} to check its checksum", file.string()));
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    EVP_DigestUpdate(ctx.get(), buffer.data(), static_cast<size_t>(in.gcount()));
  }
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), out, &len);
  std::string hex;
  for (unsigned int i = 0; i < len; ++i) hex += fmt::format("{:02x}", out[i]);
  return hex;
}

}  // namespace

std::string sha256_hex(const std::filesystem::path& file) { return digest_hex(file, EVP_sha256(), ""); }

std::string git_blob_sha1_hex(const std::filesystem::path& file) {
  std::string header = fmt::format("blob {}", std::filesystem::file_size(file));
  header.push_back('\0');
  return digest_hex(file, EVP_sha1(), header);
}

std::optional<std::string> check_against_etag(const std::filesystem::path& file, const std::string& etag) {
  if (!all_hex(etag) || (etag.size() != 64 && etag.size() != 40)) return std::nullopt;
  const bool lfs = etag.size() == 64;
  std::string actual = lfs ? sha256_hex(file) : git_blob_sha1_hex(file);
  if (actual == etag) return std::nullopt;
  return fmt::format("{} mismatch: the Hub says {}, the downloaded bytes hash to {}", lfs ? "sha256" : "git sha1",
                     etag, actual);
}

}  // namespace dschat::hub
