#pragma once
// Small helpers shared by the unit tests.
#include <exception>
#include <functional>
#include <string>

namespace dschat::testing {

// The message `f` throws, or "<no error>" — for asserting on error texts.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace dschat::testing
