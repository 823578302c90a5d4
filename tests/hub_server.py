"""A local HTTP server answering the Hugging Face Hub API paths that ``huggingface_hub``'s
``snapshot_download`` uses (pointed at with ``HF_ENDPOINT``), serving model directories from
disk: no Hub is reachable from the test machines, and this lets ``esc-dist download`` run for
real. Paths answered:

- ``GET /api/models/ORG/NAME/revision/REV``: the commit (``sha``) and the files;
- ``GET /api/models/ORG/NAME/tree/REV``: the file list (``recursive``, one page);
- ``HEAD``/``GET /ORG/NAME/resolve/REV/FILE``: the file, with ``X-Repo-Commit`` and ``ETag``.

- ``POST /api/repos/create``, ``/api/validate-yaml`` (a model card's metadata, accepted),
  ``.../preupload/REV`` and ``.../commit/REV``: uploads, kept in ``uploads`` (repository ->
  path -> bytes).

Anything else is a 404 with the ``X-Error-Code`` huggingface_hub maps to its errors
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``), and a repository listed in
``gated`` answers 403 ``GatedRepo``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class HubServer:
    def __init__(
        self,
        repos: dict[str, Path],
        commit: str = "0123456789abcdef" * 2 + "01234567",
        gated: tuple[str, ...] = (),
    ):
        self.repos, self.commit, self.gated = repos, commit, set(gated)
        self.requests: list[str] = []
        self.tokens: list[str | None] = []  # Authorization headers of uploads
        self.uploads: dict[str, dict[str, bytes]] = {}  # repo -> path -> content
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_HEAD(self):
                server.answer(self, head=True)

            def do_GET(self):
                server.answer(self, head=False)

            def do_POST(self):
                server.receive(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def files(self, repo: str) -> list[Path]:
        root = self.repos[repo]
        return sorted(p for p in root.rglob("*") if p.is_file())

    def answer(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.requests.append(f"{h.command} {path}")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo, kind, rev = "/".join(parts[2:4]), parts[4], parts[5]
            if not self._repo_ok(h, repo, rev):
                return
            root = self.repos[repo]
            if kind == "revision":
                body = {
                    "id": repo,
                    "modelId": repo,
                    "sha": self.commit,
                    "private": False,
                    "siblings": [{"rfilename": str(p.relative_to(root))} for p in self.files(repo)],
                }
            else:
                body = [
                    {
                        "type": "file",
                        "path": str(p.relative_to(root)),
                        "size": p.stat().st_size,
                        "oid": self._etag(p),
                    }
                    for p in self.files(repo)
                ]
            return self._send(h, 200, json.dumps(body).encode(), "application/json", head)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, rev, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            if not self._repo_ok(h, repo, rev):
                return
            f = self.repos[repo] / name
            if not f.is_file():
                return self._error(h, 404, "EntryNotFound", head)
            return self._send(
                h,
                200,
                f.read_bytes(),
                "application/octet-stream",
                head,
                {"X-Repo-Commit": self.commit, "ETag": f'"{self._etag(f)}"'},
            )
        self._error(h, 404, "RepoNotFound", head)

    def receive(self, h: BaseHTTPRequestHandler) -> None:
        """Uploads: create a repository, answer a pre-upload (every file "regular"), take a
        commit (NDJSON: a header, then base64 files) into ``uploads/REPO``."""
        import base64

        path = unquote(urlparse(h.path).path)
        body = h.rfile.read(int(h.headers.get("Content-Length", 0)))
        self.requests.append(f"POST {path}")
        self.tokens.append(h.headers.get("Authorization"))
        parts = path.strip("/").split("/")
        if path == "/api/repos/create":
            req = json.loads(body)
            repo = (
                f"{req.get('organization') or req.get('name').split('/')[0]}/"
                f"{req['name'].split('/')[-1]}"
            )
            self.uploads.setdefault(repo, {})
            return self._send(
                h,
                200,
                json.dumps({"url": f"{self.url}/{repo}", "name": repo}).encode(),
                "application/json",
                False,
            )
        if path == "/api/validate-yaml":  # a model card's metadata: accepted as it is
            return self._send(h, 200, b'{"errors": [], "warnings": []}', "application/json", False)
        repo = "/".join(parts[2:4])
        if parts[:2] == ["api", "models"] and parts[4] == "preupload":
            files = json.loads(body)["files"]
            out = {
                "files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                    for f in files
                ]
            }
            return self._send(h, 200, json.dumps(out).encode(), "application/json", False)
        if parts[:2] == ["api", "models"] and parts[4] == "commit":
            store = self.uploads.setdefault(repo, {})
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item.get("key") == "file":
                    v = item["value"]
                    store[v["path"]] = base64.b64decode(v["content"])
            out = {
                "commitOid": self.commit,
                "commitUrl": f"{self.url}/{repo}/commit/x",
                "pullRequestUrl": None,
            }
            return self._send(h, 200, json.dumps(out).encode(), "application/json", False)
        self._error(h, 404, "RepoNotFound", False)

    def _repo_ok(self, h, repo: str, rev: str) -> bool:
        if repo not in self.repos:
            self._error(h, 404, "RepoNotFound", h.command == "HEAD")
        elif repo in self.gated:
            self._error(h, 403, "GatedRepo", h.command == "HEAD")
        elif rev not in ("main", self.commit):
            self._error(h, 404, "RevisionNotFound", h.command == "HEAD")
        else:
            return True
        return False

    @staticmethod
    def _etag(p: Path) -> str:
        return hashlib.sha1(p.read_bytes()).hexdigest()

    def _error(self, h, status: int, code: str, head: bool) -> None:
        body = json.dumps({"error": code}).encode()
        self._send(
            h,
            status,
            body,
            "application/json",
            head,
            {"X-Error-Code": code, "X-Error-Message": code},
        )

    @staticmethod
    def _send(
        h, status: int, body: bytes, ctype: str, head: bool, headers: dict | None = None
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if not head:
            h.wfile.write(body)
