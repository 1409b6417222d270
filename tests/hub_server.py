"""A small in-memory Hugging Face Hub, served on 127.0.0.1, for testing pushes and downloads without the internet.

It implements the part of the Hub HTTP API that `huggingface_hub` (2.x) uses to create repos, commit files
(regular, non-LFS uploads only) and download them again:

- `POST /api/repos/create`, `POST /api/repos/delete`, `GET /api/whoami-v2`, `POST /api/validate-yaml`
- `GET /api/{type}s/{id}` and `GET /api/{type}s/{id}/revision/{rev}` (repo info with `sha` and `siblings`)
- `GET /api/{type}s/{id}/tree/{rev}[/{path}]` (`recursive=true|false`), `GET /api/{type}s/{id}/commits/{rev}`,
  `GET /api/{type}s/{id}/refs`
- `POST /api/{type}s/{id}/preupload/{rev}` (every file "regular"), `POST /api/{type}s/{id}/commit/{rev}` (NDJSON),
  `POST /api/{type}s/{id}/branch/{branch}`
- `HEAD`/`GET /[datasets/|spaces/]{id}/resolve/{rev}/{path}` with `X-Repo-Commit`, `ETag` and `Content-Length`
- `GET`/`POST /api/spaces/{id}/variables` (a Space's variables; `create_repo(space_variables=...)` sets them too)
- Git LFS, basic transfer (what the client does with `HF_HUB_DISABLE_XET=1`): preupload answers "lfs" for data
  files (`LFS_SUFFIXES`, e.g. the parquet shards of `datasets`' push_to_hub), then
  `POST /[datasets/|spaces/]{id}.git/info/lfs/objects/batch`, `PUT /lfs/objects/{oid}`, `POST /lfs/verify/{oid}`,
  and "lfsFile" commit lines. Everything else is uploaded inline ("regular").

Anything else answers 404 (e.g. `GET /api/agent-harnesses`, which the client may probe). Errors carry the
`X-Error-Code` header (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) that `huggingface_hub` maps to its
exception classes. Repos of every type (model, dataset, space) live in memory; each commit stores the full file
tree, and a revision is a branch name or a commit sha (full or abbreviated).

Auth: writes need `Authorization: Bearer <token>` with a token from `tokens` (401 otherwise); reads are anonymous,
except that a token listed in `invalid_tokens` gets 401 everywhere, like a revoked token on the real Hub.

The client must be pointed at `LocalHub.url`: `HF_ENDPOINT` for a subprocess, and for the current process
`huggingface_hub.constants.ENDPOINT`, `constants.HUGGINGFACE_CO_URL_TEMPLATE` and `huggingface_hub.hf_api.api.endpoint`
(all three are read once at import), see `LocalHub.patch_client`.

Usage:

    with LocalHub(tokens={"hf_test": "tester"}) as hub:
        ...  # HF_ENDPOINT=hub.url
"""

import base64
import contextlib
import datetime
import hashlib
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = ("model", "dataset", "space")
# URL prefix of a repo's web and resolve routes, per repo type (models live at the root).
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
# Files uploaded through Git LFS: `datasets` deletes its temporary parquet shards once preupload has sent them, so
# they must go through LFS before the commit (as on the real Hub, where large data files are LFS).
LFS_SUFFIXES = (".parquet", ".arrow")


def git_hash(data: bytes) -> str:
    """The git blob sha1 of `data`: what the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # branch name -> head commit sha
    variables: dict[str, dict] = field(default_factory=dict)  # a Space's variables: key -> {"value", "updatedAt"}

    def resolve(self, revision: str) -> Commit | None:
        """A branch name, a full commit sha or an abbreviated one (at least 7 characters) -> commit."""
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.commits:
            return self.commits[revision]
        matches = [sha for sha in self.commits if len(revision) >= 7 and sha.startswith(revision)]
        return self.commits[matches[0]] if len(matches) == 1 else None

    def add_commit(self, branch: str, files: dict[str, bytes], title: str, message: str, author: str) -> Commit:
        parent = self.branches.get(branch)
        digest = hashlib.sha1(f"{self.repo_type}/{self.repo_id}\n{parent}\n{title}\n{message}\n".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{git_hash(files[path])}\n".encode())
        commit = Commit(digest.hexdigest(), parent, title, message, author, _now(), files)
        self.commits[commit.sha] = commit
        self.branches[branch] = commit.sha
        return commit

    def history(self, commit: Commit) -> list[Commit]:
        """`commit` and its ancestors, newest first."""
        out = [commit]
        while out[-1].parent is not None:
            out.append(self.commits[out[-1].parent])
        return out


class HubError(Exception):
    """An HTTP error answer: status, message and optional `X-Error-Code`."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None, body: dict | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = {"error": message, **(body or {})}


class LocalHub:
    """In-memory Hub server on 127.0.0.1 (see the module docstring for the routes).

    Args:
        tokens (`dict[str, str]`, *optional*): Valid tokens -> user name. Defaults to `{"hf_local_test": "tester"}`.
        invalid_tokens (`tuple[str, ...]`): Tokens answered with 401 on every route. Defaults to `("bad",)`.
    """

    def __init__(self, tokens: dict[str, str] | None = None, invalid_tokens: tuple[str, ...] = ("bad",)):
        self.tokens = dict(tokens) if tokens is not None else {"hf_local_test": "tester"}
        self.invalid_tokens = set(invalid_tokens)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content, uploaded with PUT /lfs/objects/{oid}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request served, for assertions
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> "LocalHub":
        hub = self

        class Handler(_HubRequestHandler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="LocalHub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = self._thread = None

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("LocalHub is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def patch_client(self, monkeypatch) -> None:
        """Points the already imported `huggingface_hub` of this process at the server, with `monkeypatch`
        (a `pytest.MonkeyPatch`) so that everything is restored when it is undone.

        - `constants.ENDPOINT`: read at call time by `HfApi(...)` created later, uploads, `repocard`, ...
        - `constants.HUGGINGFACE_CO_URL_TEMPLATE`: built from the endpoint at import; `hf_hub_url` formats it.
        - `hf_api.api.endpoint`: the module-level `HfApi()` whose bound methods are the top-level functions
          (`create_repo`, `upload_folder`, `model_info`, ...) captured the endpoint at import.
        - `constants.HF_HUB_OFFLINE`: read at import too; forced off in case the test session runs offline.
        - `datasets.config.HF_ENDPOINT` (when `datasets` is imported): its own copy, read at import.
        """
        from huggingface_hub import constants, hf_api

        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(hf_api.api, "endpoint", self.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_ENDPOINT", self.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        if "datasets.config" in sys.modules:  # `datasets` reads HF_ENDPOINT at import too (for push_to_hub, load)
            datasets_config = sys.modules["datasets.config"]
            monkeypatch.setattr(datasets_config, "HF_ENDPOINT", self.url)
            resolve_url = self.url + "/datasets/{repo_id}/resolve/{revision}/{path}"
            monkeypatch.setattr(datasets_config, "HUB_DATASETS_URL", resolve_url)

    # ----- helpers for tests ----------------------------------------------------------------------------------------
    def get_repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        with self.lock:
            return self.repos[(repo_type, repo_id)]

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{URL_PREFIXES[repo_type]}{repo_id}"


class _HubRequestHandler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/0.1"

    # Silence the default stderr access log; requests are recorded in `hub.requests` instead.
    def log_message(self, format, *args):
        pass

    # ----- dispatch -------------------------------------------------------------------------------------------------
    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PUT(self):
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.query = {key: values[-1] for key, values in parse_qs(split.query).items()}
        # Split before unquoting: a quoted revision ("refs%2Fpr%2F1") or tree path is a single segment.
        self.segments = [segment for segment in split.path.split("/") if segment]
        self.body = self._read_body()
        with self.hub.lock:
            self.hub.requests.append((method, split.path))
        try:
            with self.hub.lock:
                status, payload, headers = self._route(method)
        except HubError as error:
            headers = {"X-Error-Message": error.message, **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            status, payload = error.status, error.body
        self._send(status, payload, headers, head=method == "HEAD")

    def _route(self, method: str) -> tuple[int, object, dict]:
        seg = self.segments
        if seg[:1] == ["api"]:
            if method == "POST" and seg[1:] == ["repos", "create"]:
                return self.create_repo()
            if method in ("POST", "DELETE") and seg[1:] == ["repos", "delete"]:
                return self.delete_repo()
            if method == "GET" and seg[1:] == ["whoami-v2"]:
                return self.whoami()
            if method == "POST" and seg[1:] == ["validate-yaml"]:
                return 200, {"errors": [], "warnings": []}, {}
            if len(seg) >= 4 and seg[1] in ("models", "datasets", "spaces"):
                return self.repo_api(method, seg[1][:-1], f"{unquote(seg[2])}/{unquote(seg[3])}", seg[4:])
        elif seg[:2] == ["lfs", "objects"] and method == "PUT" and len(seg) == 3:
            return self.lfs_upload(seg[2])
        elif seg[:2] == ["lfs", "verify"] and method == "POST" and len(seg) == 3:
            return self.lfs_verify(seg[2])
        elif method == "POST" and seg[-4:] == ["info", "lfs", "objects", "batch"] and len(seg) >= 6:
            repo_type = {"datasets": "dataset", "spaces": "space"}.get(seg[0], "model")
            namespace, name = seg[-6:-4]
            return self.lfs_batch(repo_type, f"{unquote(namespace)}/{unquote(name).removesuffix('.git')}")
        elif method in ("GET", "HEAD"):
            repo_type = {"datasets": "dataset", "spaces": "space"}.get(seg[0] if seg else "", "model")
            rest = seg if repo_type == "model" else seg[1:]
            if len(rest) >= 5 and rest[2] == "resolve":
                path = unquote("/".join(rest[4:]))
                return self.resolve(repo_type, f"{unquote(rest[0])}/{unquote(rest[1])}", unquote(rest[3]), path)
        raise HubError(404, f"Not found: {method} {self.path}")

    def repo_api(self, method: str, repo_type: str, repo_id: str, rest: list[str]) -> tuple[int, object, dict]:
        action, args = (rest[0], [unquote(a) for a in rest[1:]]) if rest else ("", [])
        if method == "GET" and action == "":
            return self.repo_info(repo_type, repo_id, "main")
        if method == "GET" and action == "revision" and len(args) == 1:
            return self.repo_info(repo_type, repo_id, args[0])
        if method == "GET" and action == "tree" and args:
            return self.tree(repo_type, repo_id, args[0], "/".join(args[1:]))
        if method == "GET" and action == "commits" and len(args) == 1:
            return self.list_commits(repo_type, repo_id, args[0])
        if method == "GET" and action == "refs" and not args:
            return self.refs(repo_type, repo_id)
        if method == "POST" and action == "preupload" and len(args) == 1:
            return self.preupload(repo_type, repo_id, args[0])
        if method == "POST" and action == "commit" and len(args) == 1:
            return self.commit(repo_type, repo_id, args[0])
        if method == "POST" and action == "branch" and len(args) == 1:
            return self.create_branch(repo_type, repo_id, args[0])
        if repo_type == "space" and action == "variables" and not args:
            return self.space_variables(method, repo_id)
        raise HubError(404, f"Not found: {method} {self.path}")

    # ----- request / response plumbing ------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, f"Invalid JSON body: {error}") from error

    def _send(self, status: int, payload: object, headers: dict, head: bool = False) -> None:
        if isinstance(payload, bytes):
            body, content_type = payload, "application/octet-stream"
        else:
            body, content_type = json.dumps(payload).encode(), "application/json; charset=utf-8"
        self.send_response(status)
        headers = {"Content-Type": content_type, "Content-Length": str(len(body)), **headers}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    # ----- auth -----------------------------------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else None
        if token in self.hub.invalid_tokens:
            raise HubError(401, INVALID_CREDENTIALS)
        return token

    def _user(self, required: bool) -> str | None:
        """The user of the request's token; with `required`, a valid token must be given (401 otherwise)."""
        token = self._token()
        user = self.hub.tokens.get(token) if token else None
        if required and user is None:
            raise HubError(401, INVALID_CREDENTIALS if token else "You must be authenticated to do this")
        return user

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        user = self._user(required=False)
        repo = self.hub.repos.get((repo_type, repo_id))
        # Private repos are only visible to their namespace's owner, as on the Hub (which also answers 404).
        if repo is None or (repo.private and user != repo_id.split("/")[0]):
            raise HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def _writable_repo(self, repo_type: str, repo_id: str) -> Repo:
        user = self._user(required=True)
        repo = self._repo(repo_type, repo_id)
        if repo_id.split("/")[0] != user:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    @staticmethod
    def _commit(repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # ----- routes ---------------------------------------------------------------------------------------------------
    def whoami(self):
        user = self._user(required=True)
        return 200, {"type": "user", "name": user, "orgs": [], "auth": {"accessToken": {"role": "write"}}}, {}

    def create_repo(self):
        user = self._user(required=True)
        body = self._json_body()
        repo_type = body.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        namespace = body.get("organization") or user
        if namespace != user:
            raise HubError(403, f"You don't have the rights to create a repo under {namespace}")
        repo_id = f"{namespace}/{body['name']}"
        url = self.hub.repo_url(repo_type, repo_id)
        if (repo_type, repo_id) in self.hub.repos:
            # The client reads "url" from this answer too when it passes exist_ok=True.
            raise HubError(409, f"You already created this {repo_type} repo", body={"url": url})
        private = bool(body.get("private")) or body.get("visibility") == "private"
        repo = Repo(repo_type, repo_id, private, _now())
        for variable in body.get("variables") or []:  # create_repo(..., space_variables=[{"key", "value"}])
            repo.variables[variable["key"]] = {"value": variable["value"], "updatedAt": _now()}
        repo.add_commit("main", {".gitattributes": GITATTRIBUTES}, "initial commit", "", user)
        self.hub.repos[(repo_type, repo_id)] = repo
        return 200, {"url": url, "name": repo_id, "id": repo_id}, {}

    def space_variables(self, method: str, repo_id: str):
        """GET lists a Space's variables; POST {"key", "value"} adds or updates one (add_space_variable)."""
        if method == "GET":
            return 200, self._repo("space", repo_id).variables, {}
        if method != "POST":
            raise HubError(405, f"{method} is not allowed on Space variables")
        repo = self._writable_repo("space", repo_id)
        body = self._json_body()
        repo.variables[body["key"]] = {"value": body["value"], "updatedAt": _now()}
        return 200, repo.variables, {}

    def delete_repo(self):
        body = self._json_body()
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or self._user(required=True)}/{body['name']}"
        self._writable_repo(repo_type, repo_id)
        del self.hub.repos[(repo_type, repo_id)]
        return 200, {}, {}

    def repo_info(self, repo_type: str, repo_id: str, revision: str):
        repo = self._repo(repo_type, repo_id)
        commit = self._commit(repo, revision)
        info = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.sha,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "createdAt": repo.created_at,
            "lastModified": commit.date,
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        if repo_type == "space":
            info.update(sdk="gradio", runtime={"stage": "RUNNING", "hardware": {"current": None, "requested": None}})
        return 200, info, {}

    def tree(self, repo_type: str, repo_id: str, revision: str, path: str):
        commit = self._commit(self._repo(repo_type, repo_id), revision)
        recursive = self.query.get("recursive", "false").lower() in ("1", "true")
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        entries: dict[str, dict] = {}
        for file_path in sorted(commit.files):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            # Every folder between the listed path and the file (only the first level when not recursive).
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folder = prefix + "/".join(parts[:depth])
                oid = hashlib.sha1(f"tree {commit.sha} {folder}".encode()).hexdigest()
                entries.setdefault(folder, {"type": "directory", "oid": oid, "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                data = commit.files[file_path]
                entries[file_path] = {"type": "file", "oid": git_hash(data), "size": len(data), "path": file_path}
        return 200, list(entries.values()), {}

    def list_commits(self, repo_type: str, repo_id: str, revision: str):
        repo = self._repo(repo_type, repo_id)
        history = repo.history(self._commit(repo, revision))
        items = [
            {"id": c.sha, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": c.author}]}
            for c in history
        ]
        return 200, items, {}

    def refs(self, repo_type: str, repo_id: str):
        repo = self._repo(repo_type, repo_id)
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": sha} for n, sha in repo.branches.items()]
        return 200, {"branches": branches, "tags": [], "converts": []}, {}

    def create_branch(self, repo_type: str, repo_id: str, branch: str):
        repo = self._writable_repo(repo_type, repo_id)
        if branch in repo.branches:
            raise HubError(409, f"Branch {branch} already exists")
        start = self._json_body().get("startingPoint") or "main"
        repo.branches[branch] = self._commit(repo, start).sha
        return 200, {}, {}

    def preupload(self, repo_type: str, repo_id: str, revision: str):
        repo = self._writable_repo(repo_type, repo_id)
        existing = repo.resolve(revision)
        files = []
        for item in self._json_body().get("files", []):
            # "oid" lets the client skip files that did not change; everything is uploaded inline ("regular").
            data = existing.files.get(item["path"]) if existing is not None else None
            oid = git_hash(data) if data is not None else None
            mode = "lfs" if item["path"].endswith(LFS_SUFFIXES) else "regular"
            files.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return 200, {"files": files, "commitOid": existing.sha if existing else None}, {}

    def commit(self, repo_type: str, repo_id: str, revision: str):
        repo = self._writable_repo(repo_type, repo_id)
        if self.query.get("create_pr"):
            raise HubError(400, "LocalHub does not support pull requests (create_pr)")
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision} (commits go to a branch)", "RevisionNotFound")
        head = repo.commits[repo.branches[revision]]
        files = dict(head.files)
        header: dict = {}
        for line in self.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, f"File not found: {value['path']}", "EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {path: data for path, data in files.items() if not path.startswith(folder)}
            elif key == "lfsFile":  # uploaded before the commit through the LFS batch API
                if value["oid"] not in self.hub.lfs_objects:
                    raise HubError(400, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = self.hub.lfs_objects[value["oid"]]
            else:
                raise HubError(400, f"LocalHub does not support {key!r} commit operations")
        parent = header.get("parentCommit")
        if parent is not None and parent != head.sha:
            raise HubError(412, f"parentCommit {parent} is not the head of {revision} ({head.sha})")
        user = self.hub.tokens[self._token()]
        commit = repo.add_commit(revision, files, header.get("summary", ""), header.get("description", ""), user)
        commit_url = f"{self.hub.repo_url(repo_type, repo_id)}/commit/{commit.sha}"
        return 200, {"success": True, "commitUrl": commit_url, "commitOid": commit.sha, "pullRequestUrl": None}, {}

    # ----- Git LFS (basic transfer) ----------------------------------------------------------------------------------
    def lfs_batch(self, repo_type: str, repo_id: str):
        """Asks the client to PUT every object it does not have yet, then to verify it."""
        self._writable_repo(repo_type, repo_id)
        objects = []
        for item in self._json_body().get("objects", []):
            oid, size = item["oid"], item["size"]
            answer = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.hub.lfs_objects:  # no "actions": the server has it already
                answer["actions"] = {
                    "upload": {"href": f"{self.hub.url}/lfs/objects/{oid}", "header": {}},
                    "verify": {"href": f"{self.hub.url}/lfs/verify/{oid}", "header": {}},
                }
            objects.append(answer)
        return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, {}

    def lfs_upload(self, oid: str):
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, f"The uploaded content does not hash to {oid}")
        self.hub.lfs_objects[oid] = self.body
        return 200, {}, {}

    def lfs_verify(self, oid: str):
        body = self._json_body()
        if oid not in self.hub.lfs_objects or len(self.hub.lfs_objects[oid]) != body.get("size"):
            raise HubError(404, f"LFS object {oid} was not uploaded (or has another size)")
        return 200, {}, {}

    def resolve(self, repo_type: str, repo_id: str, revision: str, path: str):
        repo = self._repo(repo_type, repo_id)
        commit = self._commit(repo, revision)
        headers = {"X-Repo-Commit": commit.sha}
        if path not in commit.files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers=headers)
        data = commit.files[path]
        headers.update({"ETag": f'"{git_hash(data)}"', "Accept-Ranges": "bytes"})
        # Resumed downloads ask for "bytes=<start>-".
        byte_range = self.headers.get("Range", "")
        if byte_range.startswith("bytes=") and byte_range[6:].split("-")[0].isdigit():
            start = int(byte_range[6:].split("-")[0])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return 206, data[start:], headers
        return 200, data, headers


__all__ = ["LocalHub", "git_hash"]


@contextlib.contextmanager
def serving(hf_home, tokens: dict[str, str]):
    """A started LocalHub with this process's huggingface_hub pointed at it, `HF_HOME` (and the Hub cache) in
    `hf_home` and `HF_TOKEN` set to the first token; everything is undone on exit. For module-scoped fixtures."""
    import pytest
    from huggingface_hub import constants

    with LocalHub(tokens=tokens, invalid_tokens=("bad",)) as server, pytest.MonkeyPatch.context() as monkeypatch:
        server.patch_client(monkeypatch)
        monkeypatch.setenv("HF_HOME", str(hf_home))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", os.path.join(str(hf_home), "hub"))
        # Reads send this token too (instead of one a developer may have saved with `hf auth login`).
        monkeypatch.setenv("HF_TOKEN", next(iter(tokens)))
        yield server
