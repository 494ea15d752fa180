#!/usr/bin/env python3
"""A Hugging Face Hub stand-in on loopback, for the download tests (this machine has no internet).

It serves the routes and headers huggingface_hub and dschat use, for model repositories held as folders
ROOT/<org>/<name>/ (their files are the `main` revision):

  HEAD|GET /<org>/<name>/resolve/<revision>/<file>
      X-Repo-Commit: the commit (sha1 of the file list and contents), ETag: the git blob sha1.
      *.safetensors are "LFS": X-Linked-Etag = sha256, X-Linked-Size, and a 302 to /cdn/<sha256> on the other
      loopback name (127.0.0.1 <-> localhost), as the Hub redirects to a CDN host.
  GET /cdn/<sha256>         the bytes, with Range (206) support.
  GET /api/models/<org>/<name>[/revision/<revision>], /api/models/<org>/<name>/tree/<revision>
                            the file lists huggingface_hub's snapshot_download asks for.
  Errors as the Hub gives them: X-Error-Code RepoNotFound (401), RevisionNotFound (404), EntryNotFound (404),
  GatedRepo (401 without a token, 403 with a wrong one).

Faults, for the tests: --cut FILE:BYTES (the first GET of FILE's bytes stops after BYTES and drops the
connection), --corrupt FILE (one byte of FILE is flipped on the wire; the headers still describe the real file),
--gated ORG/NAME --token T. Every request is appended to --log as one JSON line.

Usage: fake_hub.py ROOT --port-file F [--log L] [--cut FILE:BYTES] [--corrupt FILE] [--gated REPO --token T]
"""
import argparse
import hashlib
import http.server
import json
import os
import socketserver
import sys
import threading
import urllib.parse


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, folder):
        self.files = {}
        for dirpath, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(dirpath, name)
                self.files[os.path.relpath(path, folder)] = open(path, "rb").read()
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
        self.commit = digest.hexdigest()


class Hub:
    def __init__(self, args):
        self.args = args
        self.repos = {}
        for org in sorted(os.listdir(args.root)):
            for name in sorted(os.listdir(os.path.join(args.root, org))):
                self.repos[f"{org}/{name}"] = Repo(os.path.join(args.root, org, name))
        self.blobs = {hashlib.sha256(d).hexdigest(): (f, d) for r in self.repos.values() for f, d in r.files.items()}
        self.cut = None
        if args.cut:
            file, count = args.cut.rsplit(":", 1)
            self.cut = [file, int(count)]
        self.lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub = None

    def log_message(self, *args):
        pass

    def record(self, status):
        if self.hub.args.log:
            with self.hub.lock, open(self.hub.args.log, "a") as log:
                log.write(json.dumps({"method": self.command, "path": self.path, "status": status,
                                      "range": self.headers.get("Range"),
                                      "authorization": self.headers.get("Authorization")}) + "\n")

    def start_reply(self, status, headers, length):
        self.record(status)
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def reply(self, status, headers=(), body=b""):
        self.start_reply(status, headers, len(body))
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status, code, message):
        self.reply(status, [("X-Error-Code", code), ("X-Error-Message", message),
                            ("Content-Type", "application/json")], json.dumps({"error": message}).encode())

    def do_HEAD(self):
        self.route()

    def do_GET(self):
        self.route()

    def route(self):
        path = urllib.parse.urlparse(self.path).path
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if len(parts) == 2 and parts[0] == "cdn":
            return self.serve_blob(parts[1])
        if len(parts) >= 4 and parts[:2] == ["api", "models"] and (len(parts) == 4 or parts[4] == "revision"):
            return self.model_info("/".join(parts[2:4]), parts[5] if len(parts) > 5 else "main")
        if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "tree":
            return self.tree("/".join(parts[2:4]), parts[5])
        if len(parts) >= 5 and parts[2] == "resolve":
            return self.resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        self.error(404, "NotFound", f"no route {path}")

    def find_repo(self, repo_id, revision):
        """The repository at `revision`, or None after answering with the Hub's error."""
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self.error(401, "RepoNotFound", "Repository not found")
            return None
        if revision not in ("main", repo.commit):
            self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo

    def model_info(self, repo_id, revision):  # what snapshot_download lists a repository with
        repo = self.find_repo(repo_id, revision)
        if repo is None:
            return
        info = {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
                "siblings": [{"rfilename": f} for f in sorted(repo.files)]}
        self.reply(200, [("Content-Type", "application/json")], json.dumps(info).encode())

    def tree(self, repo_id, revision):  # the recursive listing huggingface_hub's snapshot_download walks
        repo = self.find_repo(repo_id, revision)
        if repo is None:
            return
        entries = []
        for name in sorted(repo.files):
            data = repo.files[name]
            entry = {"type": "file", "path": name, "size": len(data), "oid": git_blob_sha1(data)}
            if name.endswith(".safetensors"):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        self.reply(200, [("Content-Type", "application/json")], json.dumps(entries).encode())

    def resolve(self, repo_id, revision, file):
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self.error(401, "RepoNotFound", "Repository not found")
        if repo_id == self.hub.args.gated:
            auth = self.headers.get("Authorization")
            if auth is None:
                return self.error(401, "GatedRepo", "Access to this model is restricted")
            if auth != f"Bearer {self.hub.args.token}":
                return self.error(403, "GatedRepo", "Your token has no access to this model")
        if revision not in ("main", repo.commit):
            return self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        data = repo.files.get(file)
        if data is None:
            return self.error(404, "EntryNotFound", f"{file} does not exist")
        headers = [("X-Repo-Commit", repo.commit), ("ETag", f'"{git_blob_sha1(data)}"'), ("Accept-Ranges", "bytes")]
        if file.endswith(".safetensors"):
            sha = hashlib.sha256(data).hexdigest()
            # The real Hub redirects LFS files to a CDN on another host; clients follow only same-host redirects
            # for metadata, so the CDN here is the same server under its other loopback name.
            port = self.server.server_address[1]
            cdn = "localhost" if self.headers.get("Host", "").startswith("127.0.0.1") else "127.0.0.1"
            headers += [("X-Linked-Etag", f'"{sha}"'), ("X-Linked-Size", str(len(data))),
                        ("Location", f"http://{cdn}:{port}/cdn/{sha}")]
            return self.reply(302, headers)
        if self.command == "HEAD":
            return self.start_reply(200, headers, len(data))
        self.send_bytes(file, data, headers)

    def serve_blob(self, sha):
        entry = self.hub.blobs.get(sha)
        if entry is None:
            return self.reply(404)
        self.send_bytes(*entry, [("ETag", f'"{sha}"'), ("Accept-Ranges", "bytes")])

    def send_bytes(self, file, data, headers):
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                return self.reply(416, [("Content-Range", f"bytes */{len(data)}")])
            status = 206
            headers = headers + [("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")]
        body = data[start:]
        if self.hub.args.corrupt == file and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        cut = None
        with self.hub.lock:
            if self.hub.cut and self.hub.cut[0] == file and self.command == "GET":
                cut, self.hub.cut = self.hub.cut[1], None
        self.start_reply(status, headers, len(body))
        if self.command == "HEAD":
            return
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--log")
    parser.add_argument("--cut")
    parser.add_argument("--corrupt")
    parser.add_argument("--gated")
    parser.add_argument("--token")
    args = parser.parse_args()
    Handler.hub = Hub(args)
    server = Server(("127.0.0.1", 0), Handler)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, args.port_file)  # the test waits for this file: it appears whole, once the port is bound
    print(f"fake hub on 127.0.0.1:{server.server_address[1]} serving {sorted(Handler.hub.repos)}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
