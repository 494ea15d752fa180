#pragma once
// The digests the Hub's ETags are: sha256 of the content for LFS files, git's blob sha1 for the others.
#include <filesystem>
#include <optional>
#include <string>

namespace dschat::hub {

std::string sha256_hex(const std::filesystem::path& file);
std::string git_blob_sha1_hex(const std::filesystem::path& file);  // sha1("blob <size>\0" + content)

// Checks `file` against an ETag: 64 hex digits -> sha256, 40 -> git blob sha1. Returns the mismatch message,
// or nullopt when it matches or the ETag is neither form (then there is nothing to check against).
std::optional<std::string> check_against_etag(const std::filesystem::path& file, const std::string& etag);

}  // namespace dschat::hub
