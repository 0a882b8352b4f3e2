"""A local HTTP endpoint that speaks enough of the Hugging Face Hub API for huggingface_hub's release calls.

`HF_ENDPOINT=http://127.0.0.1:PORT` and `HF_HUB_DISABLE_XET=1` point huggingface_hub at it. It serves, for
dataset repositories: create (`/api/repos/create`), info (`/api/datasets/{id}[/revision/{rev}]`), preupload
(upload modes: LFS for binary files, regular for text, with each file's current oid so unchanged files are
skipped), the git-LFS batch API and the upload URL it hands out, commit (the NDJSON payload), tags, refs, and
file download (`/datasets/{id}/resolve/{rev}/{path}`, HEAD and GET). State lives in memory: every commit's
files, tags, and a log of the requests (method, path, Authorization header) for tests to inspect.
It is a test double for the protocol, not a Hub: no auth rules beyond "a token must be sent to write".
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".parquet", ".png", ".arrow", ".bin", ".safetensors")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool
    commits: list[dict] = field(default_factory=list)  # {"oid", "summary", "files": {path: bytes}}
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def head(self) -> dict | None:
        return self.commits[-1] if self.commits else None

    def files(self, rev: str = "main") -> dict[str, bytes] | None:
        if rev == "main":
            return self.head["files"] if self.head else {}
        oid = self.tags.get(rev, rev)
        return next((c["files"] for c in self.commits if c["oid"] == oid), None)


class HubState:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()


def _handler(state: HubState):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        # ---- helpers
        def _send(self, code: int, body: bytes | dict | None = None, headers: dict | None = None, head=False):
            data = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if isinstance(body, dict):
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _record(self):
            with state.lock:
                state.requests.append((self.command, self.path, self.headers.get("Authorization")))

        def _authorised(self) -> bool:
            if not (self.headers.get("Authorization") or "").startswith("Bearer "):
                self._send(401, {"error": "Invalid credentials in Authorization header"})
                return False
            return True

        def _repo(self, repo_id: str) -> Repo | None:
            repo = state.repos.get(repo_id)
            if repo is None:
                self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return repo

        def _info(self, repo_id: str, repo: Repo, rev: str):
            files = repo.files(rev)
            if files is None:
                return self._send(404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
            oid = repo.tags.get(rev, repo.head["oid"] if repo.head and rev == "main" else rev)
            self._send(
                200,
                {
                    "id": repo_id,
                    "_id": repo_id,
                    "sha": oid if repo.commits else None,
                    "private": repo.private,
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                    "tags": [],
                    "downloads": 0,
                    "likes": 0,
                },
            )

        # ---- verbs
        def do_HEAD(self):
            self._record()
            self._resolve(head=True)

        def do_GET(self):
            self._record()
            path = unquote(urlparse(self.path).path)
            m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/revision/(.+))?", path)
            if m:
                repo = self._repo(m.group(1))
                return repo and self._info(m.group(1), repo, m.group(2) or "main")
            m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/refs", path)
            if m:
                repo = self._repo(m.group(1))
                if repo:
                    self._send(
                        200,
                        {
                            "branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.head["oid"]}]
                            if repo.head
                            else [],
                            "tags": [
                                {"name": t, "ref": f"refs/tags/{t}", "targetCommit": o} for t, o in repo.tags.items()
                            ],
                            "converts": [],
                        },
                    )
                return
            self._resolve(head=False)

        def _resolve(self, head: bool):
            path = unquote(urlparse(self.path).path)
            m = re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if not m:
                return self._send(404, {"error": f"no route {path}"})
            repo = state.repos.get(m.group(1))
            files = repo.files(m.group(2)) if repo else None
            if files is None or m.group(3) not in files:
                return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}, head=head)
            data = files[m.group(3)]
            oid = repo.tags.get(m.group(2), repo.head["oid"] if m.group(2) == "main" else m.group(2))
            etag = hashlib.sha256(data).hexdigest() if m.group(3).endswith(LFS_SUFFIXES) else git_blob_sha1(data)
            self._send(200, data, {"X-Repo-Commit": oid, "ETag": f'"{etag}"'}, head=head)

        def do_PUT(self):
            self._record()
            m = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", urlparse(self.path).path)
            if not m:
                return self._send(404, {"error": "no route"})
            data = self._body()
            if hashlib.sha256(data).hexdigest() != m.group(1):
                return self._send(400, {"error": "sha256 mismatch"})
            with state.lock:
                state.lfs[m.group(1)] = data
            self._send(200, b"")

        def do_POST(self):
            self._record()
            path = unquote(urlparse(self.path).path)
            body = self._body()
            if path == "/api/repos/create":
                if not self._authorised():
                    return
                req = json.loads(body)
                repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                with state.lock:
                    if repo_id in state.repos:
                        return self._send(409, {"error": "You already created this dataset repo", "url": repo_id})
                    state.repos[repo_id] = Repo(private=bool(req.get("private")))
                return self._send(
                    200, {"url": f"http://{self.headers.get('Host')}/datasets/{repo_id}", "name": repo_id}
                )
            if path == "/api/validate-yaml":  # a README's metadata: YAML front matter that parses to a mapping
                return self._validate_yaml(json.loads(body)["content"])
            m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/preupload/([^/]+)", path)
            if m:
                repo = self._repo(m.group(1))
                if not repo or not self._authorised():
                    return
                files = repo.files(m.group(2)) or {}
                out = []
                for f in json.loads(body)["files"]:
                    lfs = f["path"].endswith(LFS_SUFFIXES)
                    current = files.get(f["path"])
                    oid = None
                    if current is not None:
                        oid = hashlib.sha256(current).hexdigest() if lfs else git_blob_sha1(current)
                    out.append(
                        {
                            "path": f["path"],
                            "uploadMode": "lfs" if lfs else "regular",
                            "shouldIgnore": False,
                            "oid": oid,
                        }
                    )
                return self._send(200, {"files": out, "commitOid": repo.head["oid"] if repo.head else None})
            m = re.fullmatch(r"/datasets/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
            if m:
                if not self._repo(m.group(1)) or not self._authorised():
                    return
                host = f"http://{self.headers.get('Host')}"
                objects = []
                for o in json.loads(body)["objects"]:
                    entry = {"oid": o["oid"], "size": o["size"]}
                    if o["oid"] not in state.lfs:
                        entry["actions"] = {"upload": {"href": f"{host}/lfs-upload/{o['oid']}"}}
                    objects.append(entry)
                return self._send(200, {"transfer": "basic", "objects": objects})
            m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/commit/([^/]+)", path)
            if m:
                repo = self._repo(m.group(1))
                if not repo or not self._authorised():
                    return
                return self._commit(repo, m.group(1), body)
            m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tag/([^/]+)", path)
            if m:
                repo = self._repo(m.group(1))
                if not repo or not self._authorised():
                    return
                tag = json.loads(body)["tag"]
                with state.lock:
                    if tag in repo.tags:
                        return self._send(409, {"error": f"Tag {tag} already exists"})
                    target = repo.head["oid"] if m.group(2) == "main" else m.group(2)
                    repo.tags[tag] = target
                return self._send(200, {})
            self._send(404, {"error": f"no route {path}"})

        def _validate_yaml(self, content: str):
            import yaml

            m = re.match(r"---\n(.*?)\n---\n", content, re.S)
            try:
                meta = yaml.safe_load(m.group(1)) if m else None
            except yaml.YAMLError as exc:
                meta, problem = None, str(exc)
            else:
                problem = "no YAML metadata block" if m is None else "metadata is not a mapping"
            if not isinstance(meta, dict):
                return self._send(400, {"errors": [{"message": problem}], "warnings": []})
            self._send(200, {"errors": [], "warnings": []})

        def _commit(self, repo: Repo, repo_id: str, body: bytes):
            files = dict(repo.head["files"]) if repo.head else {}
            summary = ""
            for line in body.decode().splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "header":
                    summary = value["summary"]
                elif item["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "lfsFile":
                    if value["oid"] not in state.lfs:
                        return self._send(400, {"error": f"LFS object {value['oid']} was never uploaded"})
                    files[value["path"]] = state.lfs[value["oid"]]
                elif item["key"] == "deletedFile":
                    files.pop(value["path"], None)
            with state.lock:
                oid = hashlib.sha1(f"{len(repo.commits)}:{summary}:{sorted(files)}".encode()).hexdigest()
                repo.commits.append({"oid": oid, "summary": summary, "files": files})
            url = f"http://{self.headers.get('Host')}/datasets/{repo_id}/commit/{oid}"
            self._send(200, {"commitUrl": url, "commitOid": oid})

    return Handler


class HubServer:
    """`with HubServer() as hub:` a Hub endpoint at `hub.url` on loopback."""

    def __init__(self):
        self.state = HubState()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
