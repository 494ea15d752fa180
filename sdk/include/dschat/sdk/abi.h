#pragma once
// The plugin ABI: a C struct that the host reads before trusting anything else in a library.
// abi_major comes first so a host can read it from a library built against any future layout.
#include <cstddef>
#include <cstdint>

#include <torch/headeronly/version.h>

#include "dschat/sdk/export.h"

#define DSCHAT_ABI_MAJOR 2  // 2: the fingerprint carries the SDK headers' hash
#define DSCHAT_ABI_MINOR 0

#define DSCHAT_STRINGIFY_(x) #x
#define DSCHAT_STRINGIFY(x) DSCHAT_STRINGIFY_(x)

// Each field may be overridden on the command line; the test suite does so to build mismatched plugins.
#ifndef DSCHAT_FINGERPRINT_TORCH
#define DSCHAT_FINGERPRINT_TORCH \
  DSCHAT_STRINGIFY(TORCH_VERSION_MAJOR) "." DSCHAT_STRINGIFY(TORCH_VERSION_MINOR) "." DSCHAT_STRINGIFY(TORCH_VERSION_PATCH)
#endif
#ifndef DSCHAT_FINGERPRINT_CXX11_ABI
#define DSCHAT_FINGERPRINT_CXX11_ABI _GLIBCXX_USE_CXX11_ABI
#endif
#ifndef DSCHAT_FINGERPRINT_COMPILER
#if defined(__clang__)
#define DSCHAT_FINGERPRINT_COMPILER "clang " __clang_version__
#else
#define DSCHAT_FINGERPRINT_COMPILER "gcc " __VERSION__
#endif
#endif
#ifndef DSCHAT_FINGERPRINT_LIBSTDCXX
#define DSCHAT_FINGERPRINT_LIBSTDCXX _GLIBCXX_RELEASE
#endif
// The hash of the SDK headers compiled against (sdk/cmake/DschatSdkHash.cmake generates the header, in-tree and
// for plugins built with find_package(dschat)); a plugin built without it says "unknown" and is refused.
#if __has_include("dschat/sdk_headers_hash.h")
#include "dschat/sdk_headers_hash.h"
#endif
#ifndef DSCHAT_FINGERPRINT_SDK_HEADERS
#define DSCHAT_FINGERPRINT_SDK_HEADERS "unknown"
#endif
#ifndef DSCHAT_FINGERPRINT_CUDA
#define DSCHAT_FINGERPRINT_CUDA "cpu"  // the CUDA build defines it as the toolkit's major.minor
#endif

extern "C" {

struct dschat_build_fingerprint {
  const char* torch_version;  // LibTorch headers compiled against, "2.11.0"
  int cxx11_abi;              // _GLIBCXX_USE_CXX11_ABI
  const char* compiler;       // "gcc 12.2.0"
  int libstdcxx_release;      // _GLIBCXX_RELEASE
  const char* cuda;           // "13.0" or "cpu"
  const char* sdk_headers;    // DSCHAT_FINGERPRINT_SDK_HEADERS: 16 hex digits of the public headers' sha256
};

// Registers the library's factories into the registrar handed over by the host (a dschat::Registrar*).
// Returns 0 on success; otherwise writes a message into `error` and returns non-zero.
typedef int (*dschat_register_fn)(void* registrar, char* error, size_t error_capacity) noexcept;

struct dschat_manifest {
  uint32_t abi_major;
  uint32_t abi_minor;
  dschat_build_fingerprint fingerprint;
  const char* plugin_name;
  const char* plugin_version;
  const char* description;
  dschat_register_fn register_factories;
};

typedef const dschat_manifest* (*dschat_manifest_fn)() noexcept;
}

#define DSCHAT_MANIFEST_SYMBOL "dschat_plugin_manifest"

namespace dschat {
// The fingerprint of whatever translation unit includes this header: the host's own, or a plugin's.
inline dschat_build_fingerprint this_build_fingerprint() {
  return {DSCHAT_FINGERPRINT_TORCH, DSCHAT_FINGERPRINT_CXX11_ABI, DSCHAT_FINGERPRINT_COMPILER,
          DSCHAT_FINGERPRINT_LIBSTDCXX, DSCHAT_FINGERPRINT_CUDA, DSCHAT_FINGERPRINT_SDK_HEADERS};
}
}  // namespace dschat
