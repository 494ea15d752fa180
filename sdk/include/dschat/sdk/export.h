#pragma once
// Everything is built with hidden visibility; only what is marked here crosses a library boundary.
#define DSCHAT_EXPORT __attribute__((visibility("default")))
#define DSCHAT_SDK_API DSCHAT_EXPORT
