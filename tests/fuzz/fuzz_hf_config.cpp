// libFuzzer target: one input through dschat::fuzz::exercise_hf_config (see exercise.h).
#include "exercise.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)dschat::fuzz::exercise_hf_config({reinterpret_cast<const char*>(data), size});
  return 0;
}
