#pragma once
// The two requests the Hub protocol needs, over libcurl: a HEAD that reports the file's metadata headers without
// following the redirect to the CDN, and a GET that appends the body to a file from a byte offset (resuming).
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>

namespace dschat::hub {

struct HttpResponse {
  long status = 0;
  std::map<std::string, std::string> headers;  // names lower-cased; the last value of a repeated header
  std::string body;                            // HEAD: empty; GET: only error bodies are kept
  std::string header(const std::string& lower_name) const;
};

// A failure to talk to the server at all (DNS, refused connection, timeout, reset mid-body).
struct TransportError {
  std::string message;
  bool partial_body = false;  // some body bytes arrived before the failure: a retry may resume
  bool unreachable = false;   // no answer at all (name not resolved, connection refused): retrying will not help
};

struct HttpRequest {
  std::string url;
  std::optional<std::string> bearer_token;  // sent to the first host only (curl drops it on cross-host redirects)
  int64_t timeout_s = 30;                    // connect timeout, and the longest stall allowed mid-transfer
};

// HEAD `request.url`; redirects are reported, not followed. Throws TransportError.
HttpResponse http_head(const HttpRequest& request);

// GET `request.url` (following redirects) into `file`. With `offset` > 0 asks for bytes offset.. and appends when
// the server answers 206; a 200 rewrites the file from the start. `on_progress(bytes_in_file)` is called as data
// arrives. A non-2xx answer leaves the file as it was and is returned. Throws TransportError.
HttpResponse http_get_to_file(const HttpRequest& request, const std::filesystem::path& file, int64_t offset,
                              const std::function<void(int64_t)>& on_progress);

}  // namespace dschat::hub
