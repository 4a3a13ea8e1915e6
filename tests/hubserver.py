"""A Hugging Face hub on 127.0.0.1 for tests (`HF_ENDPOINT=server.endpoint`), in a thread of the test
process: the part of the hub's HTTP API that huggingface_hub and datasets use to create a repo,
commit files to it (every file as a regular blob), read its info, list its tree and download files.

Repos live in memory as {path: bytes} per commit; each commit's sha is the sha1 of its parent and its
files, so a repo's revisions are real, distinct and stable. `seed(repo_type, repo_id, folder)` makes
a repo from a local folder (a dataset laid out as the hub lays it out). Every request is logged
(`server.requests`), so a test can say what was asked and what was not.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import threading
from pathlib import Path

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

TOKEN = "hf_mmkd_test_token"
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


class _Repo:
    def __init__(self, private: bool = False):
        self.commits: dict[str, tuple[dict[str, bytes], str]] = {}     # sha: (files, message)
        self.branches: dict[str, str] = {}                             # name: sha
        self.private = private

    def head(self, branch: str = "main") -> tuple[str, dict[str, bytes]]:
        sha = self.branches.get(branch)
        return (sha, self.commits[sha][0]) if sha else ("0" * 40, {})

    def commit(self, files: dict[str, bytes], message: str, branch: str = "main", sha: str | None = None) -> str:
        parent, _ = self.head(branch)
        if sha is None:
            h = hashlib.sha1(parent.encode())
            for path in sorted(files):
                h.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
            sha = h.hexdigest()
        self.commits[sha] = (dict(files), message)
        self.branches[branch] = sha
        return sha

    def at(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        revision = revision.removeprefix("refs/heads/")
        if revision in self.branches:
            return self.head(revision)
        if revision in self.commits:
            return revision, self.commits[revision][0]
        if not self.branches and revision == "main":
            return self.head()
        return None


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):      # the test reads `requests`, not stderr
        pass


class HubServer:
    def __init__(self):
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.validated: list[dict] = []           # each README metadata block the hub was asked to check
        self.lock = threading.Lock()
        self.server = make_server("127.0.0.1", 0, self._app, threaded=True, request_handler=_Quiet)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # -- what a test sets up ------------------------------------------------------------------
    def seed(self, repo_type: str, repo_id: str, folder: Path, message: str = "initial", sha: str | None = None) -> str:
        """Commit `folder`'s files (over what main holds) to main; `sha`: the commit's id, e.g. one a
        table pins."""
        files = {str(p.relative_to(folder)).replace("\\", "/"): p.read_bytes()
                 for p in sorted(Path(folder).rglob("*")) if p.is_file()}
        repo = self.repos.setdefault((repo_type, repo_id), _Repo())
        return repo.commit({**repo.head()[1], **files}, message, sha=sha)

    def files(self, repo_type: str, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """What `revision` of a repo holds ({path: bytes})."""
        return self.repos[(repo_type, repo_id)].at(revision)[1]

    # -- the HTTP API ---------------------------------------------------------------------------
    def _app(self, environ, start_response):
        request = Request(environ)
        with self.lock:
            self.requests.append((request.method, request.path))
        try:
            response = self._route(request)
        except KeyError as e:
            response = self._error(404, f"not found: {e}")
        return response(environ, start_response)

    @staticmethod
    def _error(status: int, message: str) -> Response:
        """As the hub answers: X-Error-Code names the kind (huggingface_hub raises by it)."""
        code = {"Repository not found": "RepoNotFound", "Revision not found": "RevisionNotFound"}
        headers = {"X-Error-Message": message}
        for start, kind in code.items():
            if message.startswith(start):
                headers["X-Error-Code"] = kind
        return Response(json.dumps({"error": message}), status=status, content_type="application/json",
                        headers=headers)

    @staticmethod
    def _json(value, status: int = 200) -> Response:
        return Response(json.dumps(value), status=status, content_type="application/json")

    def _authorised(self, request: Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {TOKEN}"

    def _split(self, parts: list[str]) -> tuple[str, list[str]]:
        """A repo id (namespace/name or name) at the start of `parts`, and the rest."""
        if len(parts) >= 2 and parts[1] not in ("revision", "tree", "preupload", "commit", "paths-info", "resolve",
                                                "branch"):
            return f"{parts[0]}/{parts[1]}", parts[2:]
        return parts[0], parts[1:]

    def _route(self, request: Request) -> Response:
        path = request.path.strip("/").split("/")
        if path[:3] == ["api", "repos", "create"]:
            return self._create(request)
        if path[:2] == ["api", "validate-yaml"]:
            return self._validate_yaml(request.get_json())
        if path[:2] == ["api", "whoami-v2"]:
            return self._json({"type": "user", "name": "mmkd-test", "orgs": []}) if self._authorised(request) \
                else self._error(401, "Invalid credentials")
        if path[0] == "api" and len(path) >= 3 and path[1] in ("models", "datasets", "spaces"):
            repo_type = path[1][:-1]
            repo_id, rest = self._split(path[2:])
            repo = self.repos.get((repo_type, repo_id))
            if repo is None:
                return self._error(404, f"Repository not found: {repo_type} {repo_id}")
            return self._api(request, repo_type, repo_id, repo, rest)
        repo_type = {"datasets": "dataset", "spaces": "space"}.get(path[0], "model")
        parts = path[1:] if repo_type != "model" else path
        repo_id, rest = self._split(parts)
        if rest[:1] == ["resolve"] and len(rest) >= 3:
            repo = self.repos.get((repo_type, repo_id))
            if repo is None:
                return self._error(404, f"Repository not found: {repo_type} {repo_id}")
            return self._resolve(request, repo, rest[1], "/".join(rest[2:]))
        return self._error(404, f"no route {request.path}")

    def _create(self, request: Request) -> Response:
        if not self._authorised(request):
            return self._error(401, "Invalid credentials")
        body = request.get_json()
        repo_type = body.get("type") or "model"
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        url = f"{self.endpoint}/{_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            return self._json({"error": "You already created this repo", "url": url}, 409)
        self.repos[(repo_type, repo_id)] = _Repo(private=bool(body.get("private")))
        return self._json({"url": url, "name": repo_id})

    def _validate_yaml(self, body: dict) -> Response:
        """What the hub checks of a README's metadata before a commit: YAML, and a model-index whose
        every result names its task type, its dataset (type, name) and its metrics (type, value)."""
        import yaml

        text = body.get("content", "")
        if not text.startswith("---"):
            return self._json({"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
        try:
            meta = yaml.safe_load(text.split("---", 2)[1]) or {}
        except yaml.YAMLError as e:
            return self._json({"errors": [{"message": f"invalid YAML: {e}"}]}, 400)
        errors = []
        for model in meta.get("model-index", []) or []:
            if not model.get("name"):
                errors.append("model-index entry without a name")
            for r in model.get("results", []):
                if not (r.get("task") or {}).get("type"):
                    errors.append("a result without task.type")
                if not all((r.get("dataset") or {}).get(k) for k in ("type", "name")):
                    errors.append("a result without dataset.type and dataset.name")
                for m in r.get("metrics", []):
                    if not m.get("type") or not isinstance(m.get("value"), (int, float)):
                        errors.append(f"a metric without type or numeric value: {m}")
        with self.lock:
            self.validated.append(meta)
        if errors:
            return self._json({"errors": [{"message": e} for e in errors]}, 400)
        return self._json({"errors": [], "warnings": []})

    def _info(self, repo_type: str, repo_id: str, repo: _Repo, sha: str, files: dict[str, bytes]) -> dict:
        return {"id": repo_id, "_id": repo_id, "sha": sha, "private": repo.private, "disabled": False,
                "gated": False, "downloads": 0, "likes": 0, "tags": [], "lastModified": "2026-12-01T00:00:00.000Z",
                "createdAt": "2026-12-01T00:00:00.000Z", "author": repo_id.split("/")[0],
                "siblings": [{"rfilename": p, "size": len(b)} for p, b in sorted(files.items())],
                "cardData": {}}

    def _api(self, request: Request, repo_type: str, repo_id: str, repo: _Repo, rest: list[str]) -> Response:
        if not rest or rest[0] == "revision":
            found = repo.at("/".join(rest[1:]) or "main")
            if found is None:
                return self._error(404, f"Revision not found: {'/'.join(rest[1:])}")
            return self._json(self._info(repo_type, repo_id, repo, *found))
        if rest[0] == "tree":
            found = repo.at(rest[1])
            if found is None:
                return self._error(404, f"Revision not found: {rest[1]}")
            sha, files = found
            return self._json(self._tree(files, "/".join(rest[2:]), request.args.get("recursive") in ("1", "true", "True")))
        if rest[0] == "paths-info":
            found = repo.at(rest[1])
            if found is None:
                return self._error(404, f"Revision not found: {rest[1]}")
            asked = request.form.getlist("paths") or (request.get_json(silent=True) or {}).get("paths", [])
            listing = self._tree(found[1], "", True)
            return self._json([e for e in listing if e["path"] in asked])
        if rest[0] == "branch" and request.method == "POST":
            if not self._authorised(request):
                return self._error(401, "Invalid credentials")
            name = "/".join(rest[1:])
            if name in repo.branches:
                return self._error(409, f"Branch {name} already exists")
            repo.branches[name] = repo.head()[0]
            return self._json({"name": name})
        if rest[0] == "preupload":
            if not self._authorised(request):
                return self._error(401, "Invalid credentials")
            files = request.get_json()["files"]
            return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                         for f in files], "commitOid": repo.head()[0]})
        if rest[0] == "commit":
            if not self._authorised(request):
                return self._error(401, "Invalid credentials")
            return self._commit(request, repo_type, repo_id, repo, "/".join(rest[1:]))
        return self._error(404, f"no route {request.path}")

    @staticmethod
    def _tree(files: dict[str, bytes], under: str, recursive: bool) -> list[dict]:
        under = under.strip("/")
        out, dirs = [], set()
        for path in sorted(files):
            if under and not path.startswith(under + "/"):
                continue
            rel = path[len(under) + 1:] if under else path
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    dirs.add("/".join(([under] if under else []) + parts[:depth]))
            if recursive or len(parts) == 1:
                data = files[path]
                out.append({"type": "file", "path": path, "size": len(data),
                            "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()})
        out += [{"type": "directory", "path": d, "size": 0, "oid": hashlib.sha1(d.encode()).hexdigest()}
                for d in sorted(dirs)]
        return out

    def _commit(self, request: Request, repo_type: str, repo_id: str, repo: _Repo, branch: str) -> Response:
        from urllib.parse import unquote

        branch = unquote(branch) or "main"
        if repo.branches and branch not in repo.branches:
            return self._error(404, f"Revision not found: {branch}")
        _, files = repo.head(branch)
        files, message = dict(files), ""
        for line in request.get_data().decode("utf-8").splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value.get("summary", "")
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {p: b for p, b in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:
                return self._error(400, f"this test hub takes regular files only, not {key!r}")
        sha = repo.commit(files, message, branch)
        return self._json({"commitUrl": f"{self.endpoint}/{_PREFIX[repo_type]}{repo_id}/commit/{sha}",
                           "commitOid": sha, "pullRequestUrl": None})

    def _resolve(self, request: Request, repo: _Repo, revision: str, path: str) -> Response:
        found = repo.at(revision)
        if found is None:
            return self._error(404, f"Revision not found: {revision}")
        sha, files = found
        if path not in files:
            return Response(status=404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha,
                                                 "X-Error-Message": f"Entry not found: {path}"})
        data = files[path]
        etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Content-Length": str(len(data)),
                   "Accept-Ranges": "bytes"}
        rng = request.headers.get("Range")
        if rng and rng.startswith("bytes=") and request.method == "GET":
            start, _, end = rng[6:].partition("-")
            start, end = int(start or 0), int(end) if end else len(data) - 1
            part = data[start:end + 1]
            headers.update({"Content-Length": str(len(part)), "Content-Range": f"bytes {start}-{end}/{len(data)}"})
            return Response(part, status=206, headers=headers, content_type="application/octet-stream")
        return Response(data, headers=headers, content_type="application/octet-stream")   # HEAD: werkzeug sends no body


@contextlib.contextmanager
def hub_server():
    server = HubServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
