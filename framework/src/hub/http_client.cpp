#include "http_client.h"

#include <cctype>
#include <cstdio>
#include <memory>
#include <mutex>

#include <curl/curl.h>
#include <fmt/format.h>

namespace dschat::hub {
namespace {

void global_init_once() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

size_t collect_header(char* data, size_t size, size_t count, void* user) {
  auto* response = static_cast<HttpResponse*>(user);
  std::string line(data, size * count);
  // A new status line (after a redirect or a 100 Continue) starts a new header set.
  if (line.rfind("HTTP/", 0) == 0) response->headers.clear();
  const size_t colon = line.find(':');
  if (colon != std::string::npos) {
    std::string value = line.substr(colon + 1);
    while (!value.empty() && std::isspace(static_cast<unsigned char>(value.front()))) value.erase(0, 1);
    while (!value.empty() && std::isspace(static_cast<unsigned char>(value.back()))) value.pop_back();
    response->headers[lower(line.substr(0, colon))] = value;
  }
  return size * count;
}

struct Easy {
  CURL* curl;
  curl_slist* headers = nullptr;
  char error[CURL_ERROR_SIZE] = {0};
  Easy() : curl((global_init_once(), curl_easy_init())) {
    if (curl == nullptr) throw TransportError{"libcurl could not start a request"};
  }
  ~Easy() {
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
  }
  void prepare(const HttpRequest& request, HttpResponse& response) {
    curl_easy_setopt(curl, CURLOPT_URL, request.url.c_str());
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, static_cast<long>(request.timeout_s));
    // A stall (under 1 byte/s for timeout_s) is an error; a slow but moving transfer is not.
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, static_cast<long>(request.timeout_s));
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "dschat/" DSCHAT_VERSION " (libcurl)");
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, collect_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &response);
    // Sizes and checksums are of the stored bytes: never a transfer encoding.
    headers = curl_slist_append(headers, "Accept-Encoding: identity");
    if (request.bearer_token) headers = curl_slist_append(headers, ("Authorization: Bearer " + *request.bearer_token).c_str());
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  }
  void perform(HttpResponse& response, bool partial_body) {
    CURLcode code = curl_easy_perform(curl);
    if (code != CURLE_OK) {
      const bool unreachable = code == CURLE_COULDNT_RESOLVE_HOST || code == CURLE_COULDNT_RESOLVE_PROXY ||
                               code == CURLE_COULDNT_CONNECT;
      throw TransportError{error[0] ? std::string(error) : std::string(curl_easy_strerror(code)), partial_body,
                           unreachable};
    }
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response.status);
  }
};

struct FileSink {
  std::FILE* file = nullptr;
  std::filesystem::path path;
  int64_t offset = 0;  // bytes already in the file when the transfer started
  int64_t written = 0;
  long status = 0;
  HttpResponse* response = nullptr;
  CURL* curl = nullptr;
  const std::function<void(int64_t)>* on_progress = nullptr;
  bool opened = false;
  bool failed_open = false;
};

size_t write_body(char* data, size_t size, size_t count, void* user) {
  auto* sink = static_cast<FileSink*>(user);
  const size_t n = size * count;
  if (!sink->opened) {
    long status = 0;
    curl_easy_getinfo(sink->curl, CURLINFO_RESPONSE_CODE, &status);
    sink->status = status;
    if (status < 200 || status >= 300) {  // an error page: its start is kept for the message, the file untouched
      const size_t room = 4096 - std::min<size_t>(4096, sink->response->body.size());
      sink->response->body.append(data, std::min(n, room));
      return n;
    }
    // 206: the server resumes where the file ends; 200: it sends everything, so start the file over.
    const bool resume = status == 206 && sink->offset > 0;
    if (!resume) sink->offset = 0;
    sink->file = std::fopen(sink->path.c_str(), resume ? "ab" : "wb");
    if (sink->file == nullptr) {
      sink->failed_open = true;
      return 0;  // aborts the transfer
    }
    sink->opened = true;
  }
  if (std::fwrite(data, 1, n, sink->file) != n) return 0;
  sink->written += static_cast<int64_t>(n);
  if (*sink->on_progress) (*sink->on_progress)(sink->offset + sink->written);
  return n;
}

}  // namespace

std::string HttpResponse::header(const std::string& lower_name) const {
  auto it = headers.find(lower_name);
  return it == headers.end() ? std::string() : it->second;
}

HttpResponse http_head(const HttpRequest& request) {
  HttpResponse response;
  Easy easy;
  easy.prepare(request, response);
  curl_easy_setopt(easy.curl, CURLOPT_NOBODY, 1L);
  curl_easy_setopt(easy.curl, CURLOPT_FOLLOWLOCATION, 0L);
  easy.perform(response, false);
  return response;
}

HttpResponse http_get_to_file(const HttpRequest& request, const std::filesystem::path& file, int64_t offset,
                              const std::function<void(int64_t)>& on_progress) {
  HttpResponse response;
  Easy easy;
  easy.prepare(request, response);
  FileSink sink;
  sink.path = file;
  sink.offset = offset;
  sink.response = &response;
  sink.curl = easy.curl;
  sink.on_progress = &on_progress;
  curl_easy_setopt(easy.curl, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(easy.curl, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(easy.curl, CURLOPT_WRITEFUNCTION, write_body);
  curl_easy_setopt(easy.curl, CURLOPT_WRITEDATA, &sink);
  const std::string range = fmt::format("{}-", offset);
  if (offset > 0) curl_easy_setopt(easy.curl, CURLOPT_RANGE, range.c_str());
  try {
    easy.perform(response, false);
  } catch (TransportError& e) {
    if (sink.file) std::fclose(sink.file);
    if (sink.failed_open) throw TransportError{fmt::format("cannot write {}", file.string()), false};
    e.partial_body = sink.written > 0;
    throw;
  }
  if (sink.file && std::fclose(sink.file) != 0) throw TransportError{fmt::format("cannot write {}", file.string())};
  if (!sink.opened && response.status >= 200 && response.status < 300) {
    // An empty body (a zero-byte file): make sure the file exists and is empty.
    if (std::FILE* f = std::fopen(file.c_str(), response.status == 206 ? "ab" : "wb")) std::fclose(f);
  }
  return response;
}

}  // namespace dschat::hub
