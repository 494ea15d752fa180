// libFuzzer target: one input through dschat::fuzz::exercise_safetensors (see exercise.h).
#include "exercise.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)dschat::fuzz::exercise_safetensors({reinterpret_cast<const char*>(data), size});
  return 0;
}
