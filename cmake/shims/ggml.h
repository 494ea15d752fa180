// llama.cpp's common/json.cpp asserts with GGML_ASSERT from ggml.h; dschat builds that file without ggml, so this
// stands in with the same meaning: a broken invariant stops the process with the condition's text.
#pragma once
#include <cstdio>
#include <cstdlib>
#define GGML_ASSERT(x)                                                   \
  do {                                                                   \
    if (!(x)) {                                                          \
      std::fprintf(stderr, "%s:%d: GGML_ASSERT(%s) failed\n", __FILE__, __LINE__, #x); \
      std::abort();                                                      \
    }                                                                    \
  } while (0)
