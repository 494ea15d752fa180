#pragma once
// Every file dschat writes goes to a temporary name in the same folder, is flushed to disk, and is renamed into
// place, so a crash never leaves a half-written file that looks complete.
#include <filesystem>
#include <string_view>

#include "dschat/sdk/export.h"

namespace dschat {

DSCHAT_SDK_API void write_file_atomic(const std::filesystem::path& file, std::string_view content);

// A unique temporary name beside `file` ("<file>.tmp-<pid>-<n>").
DSCHAT_SDK_API std::filesystem::path temporary_path_for(const std::filesystem::path& file);

// Flushes `file` to disk, renames it to `target`, and flushes the folder so the rename itself survives a crash.
DSCHAT_SDK_API void commit_file(const std::filesystem::path& file, const std::filesystem::path& target);

}  // namespace dschat
