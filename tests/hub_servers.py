"""Local stand-ins for the Hugging Face Hub, so that push and pull run through the real client code offline.

Two servers share one `mirrors_root` tree of git repositories, `mirrors_root/{models,datasets}/<org>/<name>`:

* `OlahServer` runs olah 0.5.4, a real read-only Hub mirror from PyPI, from its own venv (`.venv-olah`,
  created by `make install`) in offline mode. It serves those git repos through the Hub's download API, so
  `AutoModel.from_pretrained("org/name", trust_remote_code=True)`, `snapshot_download` and
  `datasets.load_dataset("org/name")` run unchanged with `HF_ENDPOINT` pointing at it. It refuses uploads.
* `UploadServer` is a small stdlib HTTP server written here, NOT the Hub. It implements only the part of the
  Hub's HTTP API that huggingface_hub's `create_repo`, `upload_folder`, `create_commit` (and so
  `Trainer.push_to_hub`) call when `HF_HUB_DISABLE_XET=1`, and writes every commit into the same git tree, so
  a push through the real client can be pulled back through olah.

What the upload path exercises: the real client's request sequence (POST /api/repos/create, POST
/api/validate-yaml for a README.md, POST .../preupload/{rev}, the NDJSON POST .../commit/{rev}, and
GET .../tree/{rev} when `delete_patterns` is used), base64 file contents, file and folder deletions, skipping
of unchanged files (the preupload answer carries each existing file's git blob id, as the Hub's does),
`parentCommit` checks, and the presence of a bearer token on every write.
What it does NOT exercise: authentication (any non-empty token is accepted, nothing is checked against an
account), private/gated visibility, LFS and Xet (the server answers uploadMode "regular" for every file, so
even model.safetensors travels base64-encoded inside the commit and is stored as a plain git blob; the Hub
would send it through LFS or Xet), branches other than `main`, pull requests (`create_pr`), copies, Spaces,
the Hub's README metadata rules (only "the YAML front matter parses to a mapping" is checked), `.gitignore`
handling in preupload, and the initial `.gitattributes` commit the Hub makes when it creates a repo (here
`main` appears with the first commit). Any endpoint outside that list answers 404 naming the method and
path, so a change in the client's calls fails loudly instead of passing by accident.

`run_isolated_python` runs code in a child of the test venv's interpreter that cannot import
`modeling_mosaic`, so a pulled checkpoint is proven to load from its own remote code.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
OLAH_VENV = REPO_ROOT / ".venv-olah"
REPO_TYPES = ("models", "datasets")  # folder names in the mirrors tree, and the plural used in Hub URLs
BRANCH = "main"
SERVER_START_TIMEOUT_S = 60.0
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class HubRequestError(Exception):
    """An error the upload server answers with: an HTTP status, a message, the Hub's X-Error-Code and any
    extra JSON fields the Hub puts in that answer."""

    def __init__(self, status: int, message: str, error_code: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.error_code, self.extra = status, message, error_code, extra


# ------------------------------------------------------------------------------------------ git storage
def _git_env() -> dict:
    """The environment for git: no inherited GIT_* variable may redirect it to another repository."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | {"GIT_TERMINAL_PROMPT": "0"}


def _check_path_in_repo(path: str) -> str:
    """Reject paths that git's index format or a checkout could misread."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..", ".git") for p in parts) or any(
            c in path for c in "\n\r\t\0\\"):
        raise HubRequestError(400, f"invalid path in repo: {path!r}")
    return path


class BareRepo:
    """A bare git repository with one branch, `main`, written with git plumbing only (no work tree).

    This is how the servers store a Hub repo: olah reads commits and blobs straight from it. A commit is a
    compare-and-swap of refs/heads/main, so two concurrent writers cannot silently overwrite each other.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def location(cls, mirrors_root, repo_type: str, repo_id: str) -> Path:
        if repo_type not in REPO_TYPES:
            raise ValueError(f"repo_type must be one of {REPO_TYPES}, got {repo_type!r}")
        if not _REPO_ID.match(repo_id):
            raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
        return Path(mirrors_root) / repo_type / repo_id

    @classmethod
    def create(cls, path: Path) -> BareRepo:
        """`git init --bare` with a local committer identity, so commits never depend on a global config."""
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "--quiet", "--bare", f"--initial-branch={BRANCH}", str(path)],
                       check=True, env=_git_env(), capture_output=True)
        repo = cls(path)
        repo._git("config", "user.name", "MOSAIC test hub")
        repo._git("config", "user.email", "test-hub@localhost")
        return repo

    def exists(self) -> bool:
        return (self.path / "HEAD").is_file()

    def _git(self, *args: str, data: bytes | None = None, env: dict | None = None, check: bool = True) -> bytes:
        result = subprocess.run(["git", f"--git-dir={self.path}", *args], input=data, capture_output=True,
                                env=_git_env() | (env or {}), check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed in {self.path}: {result.stderr.decode().strip()}")
        return result.stdout

    def head(self) -> str | None:
        """The commit `main` points to, or None before the first commit."""
        out = self._git("rev-parse", "--verify", "--quiet", f"refs/heads/{BRANCH}", check=False)
        return out.decode().strip() or None

    def files(self, commit: str | None = None) -> dict[str, tuple[str, int]]:
        """path -> (git blob id, size) of every file at `commit` (default: head); {} for an empty repo."""
        commit = commit or self.head()
        if commit is None:
            return {}
        out = self._git("ls-tree", "-r", "-l", "-z", "--full-tree", commit)
        entries = {}
        for record in out.split(b"\0"):
            if record:
                meta, path = record.split(b"\t", 1)
                _mode, _kind, oid, size = meta.split()
                entries[path.decode()] = (oid.decode(), int(size))
        return entries

    def history(self) -> list[str]:
        """The commits of `main`, newest first ([] before the first)."""
        return self._git("rev-list", self.head()).decode().split() if self.head() else []

    def read(self, path: str, commit: str | None = None) -> bytes:
        return self._git("cat-file", "blob", f"{commit or self.head()}:{path}")

    def commit(self, additions: dict[str, bytes], deletions=(), folder_deletions=(), message="update",
               parent: str | None = None) -> str:
        """Apply file deletions, folder deletions, then additions (path -> bytes) on top of `main`; return the
        new commit id. A deleted path that does not exist, or a `parent` that is not the head, is an error."""
        head = self.head()
        if parent is not None and (head is None or not head.startswith(parent)):
            raise HubRequestError(412, f"parent commit {parent} is not the head of {BRANCH} ({head})")
        tree = {path: oid for path, (oid, _) in self.files(head).items()}
        for path in deletions:
            if tree.pop(_check_path_in_repo(path), None) is None:
                raise HubRequestError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        for folder in folder_deletions:
            prefix = _check_path_in_repo(folder.rstrip("/")) + "/"
            doomed = [p for p in tree if p.startswith(prefix)]
            if not doomed:
                raise HubRequestError(404, f"A folder with this name doesn't exist: {folder}", "EntryNotFound")
            for path in doomed:
                del tree[path]
        for path, content in additions.items():
            tree[_check_path_in_repo(path)] = self._git("hash-object", "-w", "--stdin", data=content).decode().strip()
        with tempfile.TemporaryDirectory() as tmp:
            index = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
            listing = "".join(f"100644 blob {oid}\t{path}\n" for path, oid in sorted(tree.items()))
            self._git("update-index", "--add", "--index-info", data=listing.encode(), env=index)
            tree_id = self._git("write-tree", env=index).decode().strip()
        parents = ["-p", head] if head else []
        new = self._git("commit-tree", tree_id, *parents, "-m", message).decode().strip()
        self._git("update-ref", f"refs/heads/{BRANCH}", new, head or "0" * 40)
        return new


def make_git_repo(src_dir, mirrors_root, repo_type: str, repo_id: str, message: str = "upload") -> str:
    """Commit every file under `src_dir` to the mirror repo `mirrors_root/<repo_type>/<repo_id>` (created if
    needed; repo_type is "models" or "datasets"); returns the commit id olah will serve."""
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise FileNotFoundError(f"make_git_repo: {src_dir} is not a directory")
    path = BareRepo.location(mirrors_root, repo_type, repo_id)
    repo = BareRepo(path) if BareRepo(path).exists() else BareRepo.create(path)
    files = {p.relative_to(src_dir).as_posix(): p.read_bytes() for p in sorted(src_dir.rglob("*")) if p.is_file()}
    return repo.commit(files, message=message)


# ------------------------------------------------------------------------------------ process helpers
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    """True once an HTTP server answers at `url` with any status (a 404 is an answer)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        opener.open(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
    return True


def hub_env(endpoint: str, hf_home, **extra: str) -> dict:
    """Environment for a child that talks to a local Hub: the caller's variables without any HF_*, proxy or
    offline setting that could leak in, plus HF_ENDPOINT, a private HF_HOME, no Xet and no telemetry."""
    dropped = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(dropped)}
    env |= {"HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home), "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "NO_PROXY": "127.0.0.1,localhost"}
    return env | extra


#: Prepended to every isolated child: put the venv's site-packages on sys.path WITHOUT running its .pth files
#: (which install the editable `modeling_mosaic` finder), then prove the package is out of reach.
_ISOLATION_PRELUDE = """\
import sys, importlib.util
sys.path.append(sys.argv.pop(1))
assert importlib.util.find_spec("modeling_mosaic") is None, "modeling_mosaic is importable in the isolated child"
"""


def run_isolated_python(code: str, *args: str, env: dict, cwd, timeout: float = 120.0) -> str:
    """Run `code` with this interpreter as `python -I -S` (no cwd, PYTHON* variables or site hooks; the
    site-packages directory is added by hand), with `args` in sys.argv[1:]; return its stdout, or raise with
    its stderr. The child asserts that `modeling_mosaic` cannot be imported before running `code`."""
    site_packages = sysconfig.get_path("purelib")
    cmd = [sys.executable, "-I", "-S", "-c", _ISOLATION_PRELUDE + code, site_packages, *map(str, args)]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise AssertionError(f"isolated child failed (exit {result.returncode}):\n{result.stderr[-6000:]}")
    return result.stdout


# --------------------------------------------------------------------------------------------- olah
class OlahServer:
    """olah 0.5.4 from `.venv-olah`, offline, serving `mirrors_root` on a free 127.0.0.1 port.

    `with OlahServer(mirrors_root) as url:` starts it, waits until it answers, yields the endpoint for
    HF_ENDPOINT, and always stops its whole process group. A missing venv is an error that says how to fix it.
    """

    def __init__(self, mirrors_root, venv: Path = OLAH_VENV):
        self.mirrors_root = Path(mirrors_root).resolve()
        self.executable = Path(venv) / "bin" / "olah-cli"
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None

    def __enter__(self) -> str:
        if not self.executable.is_file():
            raise RuntimeError(f"olah is not installed ({self.executable} is missing): run `make test` (or `make "
                               ".venv-olah/bin/olah-cli`), which creates .venv-olah with olah==0.5.4")
        self.mirrors_root.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="olah-"))
        port = free_port()
        config = self.workdir / "olah.toml"
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {port}\n'
            f"repos-path = {json.dumps(str(self.workdir / 'repos'))}\n"
            f"mirrors-path = [{json.dumps(str(self.mirrors_root))}]\n"
            "[accessibility]\noffline = true\n")
        self.log = self.workdir / "olah.out"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [str(self.executable), "--config", str(config), "--log-path", str(self.workdir / "logs")],
                cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        try:
            self._wait()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self.url

    def _wait(self):
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not _answers(f"{self.url}/api/models/probe/probe/revision/{BRANCH}"):
            if self.process.poll() is not None:
                raise RuntimeError(f"olah exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"olah did not answer within {SERVER_START_TIMEOUT_S} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    def __exit__(self, *exc):
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return False


# ----------------------------------------------------------------------------------- upload endpoint
_REPO = r"/api/(?P<type>models|datasets)/(?P<repo_id>[^/]+/[^/]+)"
_ROUTES = [  # (method, path regex, handler name): every route this server knows
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("POST", _REPO + r"/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", _REPO + r"/commit/(?P<rev>[^/]+)", "commit"),
    ("GET", _REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
    ("GET", _REPO + r"(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
]


class _HubHandler(BaseHTTPRequestHandler):
    """Dispatches a request to the `UploadServer` method its route names; everything else is a 404."""

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def _dispatch(self, method: str):
        hub: UploadServer = self.server.hub
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        status, payload, error_code = 404, {"error": f"UploadServer does not implement {method} {url.path}"}, None
        try:
            for route_method, pattern, name in _ROUTES:
                match = re.fullmatch(pattern, url.path)
                if match and route_method == method:
                    if method == "POST":
                        self._require_token()
                    args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    status, payload = 200, getattr(hub, name)(body=self._body(), query=query, **args)
                    break
        except HubRequestError as err:
            status, payload, error_code = err.status, {"error": err.message, **err.extra}, err.error_code
        except Exception as err:  # noqa: BLE001 - a bug or a malformed request: answer, never drop the connection
            status, payload = 500, {"error": f"UploadServer failed on {method} {url.path}: {err!r}"}
        hub.requests.append((method, url.path, status))
        self._reply(status, payload, error_code)

    def _require_token(self):
        if not re.fullmatch(r"Bearer \S+", self.headers.get("Authorization", "")):
            raise HubRequestError(401, "a write needs an 'Authorization: Bearer <token>' header")

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            raise HubRequestError(411, "chunked request bodies are not supported; send Content-Length")
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, payload, error_code: str | None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if error_code:
            self.send_header("X-Error-Code", error_code)
            self.send_header("X-Error-Message", payload["error"])
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, *args):
        """Requests are recorded in `UploadServer.requests` instead of being printed."""


class UploadServer:
    """The write half of the Hub API that huggingface_hub uses with HF_HUB_DISABLE_XET=1 (see the module
    docstring for exactly what is and is not covered), storing commits as git repos under `mirrors_root`.

    `with UploadServer(mirrors_root) as url:` serves on a free 127.0.0.1 port from a thread of this process;
    `requests` lists (method, path, status) of every request, for asserting on the client's behaviour.
    """

    def __init__(self, mirrors_root):
        self.mirrors_root = Path(mirrors_root).resolve()
        self.requests: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()  # one commit at a time: Trainer pushes from a background thread

    def __enter__(self) -> str:
        self.mirrors_root.mkdir(parents=True, exist_ok=True)
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
        self._http.hub = self
        self._thread = threading.Thread(target=self._http.serve_forever, name="UploadServer", daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        return self.url

    def __exit__(self, *exc):
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=10)
        return False

    # -------------------------------------------------------------------------------------- helpers
    def _repo(self, type: str, repo_id: str, rev: str = BRANCH) -> BareRepo:
        if not _REPO_ID.match(repo_id):
            raise HubRequestError(400, f"invalid repo id {repo_id!r}")
        repo = BareRepo(BareRepo.location(self.mirrors_root, type, repo_id))
        if not repo.exists():
            raise HubRequestError(404, f"Repository not found: {type}/{repo_id}", "RepoNotFound")
        if rev != BRANCH:
            raise HubRequestError(404, f"Revision not found: {rev!r} (this server has only {BRANCH!r})",
                                  "RevisionNotFound")
        return repo

    def _repo_url(self, type: str, repo_id: str) -> str:
        return f"{self.url}/{repo_id}" if type == "models" else f"{self.url}/{type}/{repo_id}"

    @staticmethod
    def _json(body: bytes) -> dict:
        try:
            return json.loads(body)
        except ValueError as err:
            raise HubRequestError(400, f"request body is not JSON: {err}") from None

    @staticmethod
    def _no_pull_requests(query: dict):
        if query.get("create_pr") == "1":
            raise HubRequestError(400, "pull requests (create_pr) are not supported by this test server")

    # ------------------------------------------------------------------------------------ endpoints
    def create_repo(self, body: bytes, query: dict) -> dict:
        """POST /api/repos/create {name, organization, type?}: a new empty repo; 409 (with its url) if it exists."""
        payload = self._json(body)
        kind = payload.get("type") or "model"
        if kind not in ("model", "dataset"):
            raise HubRequestError(400, f"repo type {kind!r} is not supported (only model and dataset)")
        if not payload.get("organization"):
            raise HubRequestError(400, "repo id must be 'org/name' (there is no user account to default to)")
        repo_id, type = f"{payload['organization']}/{payload['name']}", kind + "s"
        if not _REPO_ID.match(repo_id):
            raise HubRequestError(400, f"invalid repo id {repo_id!r}")
        with self._lock:
            path = BareRepo.location(self.mirrors_root, type, repo_id)
            if BareRepo(path).exists():  # the Hub's 409 carries the url: create_repo(exist_ok=True) returns it
                raise HubRequestError(409, f"You already created this {kind} repo: {repo_id}",
                                      url=self._repo_url(type, repo_id))
            BareRepo.create(path)
        return {"url": self._repo_url(type, repo_id), "name": repo_id, "id": repo_id}

    def validate_yaml(self, body: bytes, query: dict) -> dict:
        """POST /api/validate-yaml {content, repoType}: the README's front matter must parse to a mapping."""
        content = self._json(body).get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.DOTALL)
        if match:
            try:
                metadata = yaml.safe_load(match.group(1))
            except yaml.YAMLError as err:
                raise HubRequestError(400, f"README.md metadata is not valid YAML: {err}") from None
            if metadata is not None and not isinstance(metadata, dict):
                raise HubRequestError(400, "README.md metadata must be a YAML mapping")
        return {"errors": [], "warnings": []}

    def preupload(self, body: bytes, query: dict, type: str, repo_id: str, rev: str) -> dict:
        """POST .../preupload/{rev} {files: [{path, sample, size}]}: every file is "regular" (inline base64 in
        the commit); `oid` is the blob id already stored at that path, which lets the client skip it."""
        self._no_pull_requests(query)
        existing = self._repo(type, repo_id, rev).files()
        files = self._json(body).get("files")
        if not isinstance(files, list):
            raise HubRequestError(400, "preupload: 'files' must be a list")
        return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                           "oid": existing.get(f["path"], (None,))[0]} for f in files]}

    def commit(self, body: bytes, query: dict, type: str, repo_id: str, rev: str) -> dict:
        """POST .../commit/{rev}, NDJSON: a header line, then file (base64), deletedFile and deletedFolder
        lines. LFS pointers and unknown line kinds are refused."""
        self._no_pull_requests(query)
        repo = self._repo(type, repo_id, rev)
        lines = [self._json(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubRequestError(400, "commit: the first NDJSON line must be the header")
        header = lines[0]["value"]
        additions, deletions, folder_deletions = {}, [], []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            if key == "file" and value.get("encoding") == "base64":
                additions[value["path"]] = base64.b64decode(value["content"], validate=True)
            elif key == "deletedFile":
                deletions.append(value["path"])
            elif key == "deletedFolder":
                folder_deletions.append(value["path"])
            else:
                raise HubRequestError(400, f"commit: unsupported operation {key!r} (this server stores regular "
                                           f"files only: no LFS, Xet or copies)")
        message = header.get("summary") or ""
        if not message:
            raise HubRequestError(400, "commit: empty summary")
        if header.get("description"):
            message += "\n\n" + header["description"]
        with self._lock:
            oid = repo.commit(additions, deletions, folder_deletions, message, parent=header.get("parentCommit"))
        return {"success": True, "commitOid": oid, "commitUrl": f"{self._repo_url(type, repo_id)}/commit/{oid}",
                "hookOutput": "", "pullRequestUrl": None}

    def tree(self, body: bytes, query: dict, type: str, repo_id: str, rev: str, path: str = "") -> list:
        """GET .../tree/{rev}[/{path}]?recursive=: files and folders, one page (no `expand` details)."""
        if query.get("expand", "False").lower() == "true":
            raise HubRequestError(400, "tree: expand=True (last commits, security status) is not supported")
        recursive = query.get("recursive", "False").lower() == "true"
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries = {}
        for file, (oid, size) in self._repo(type, repo_id, rev).files().items():
            if not file.startswith(prefix):
                continue
            parts = file[len(prefix):].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):  # the folders on the way, listed once each
                folder = prefix + "/".join(parts[:i])
                entries.setdefault(folder, {"type": "directory", "oid": "", "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                entries[file] = {"type": "file", "oid": oid, "size": size, "path": file}
        if prefix and not entries:
            raise HubRequestError(404, f"tree: no folder {path!r} in {repo_id}", "EntryNotFound")
        return list(entries.values())

    def repo_info(self, body: bytes, query: dict, type: str, repo_id: str, rev: str = BRANCH) -> dict:
        """GET /api/{type}s/{repo_id}[/revision/{rev}]: id, head commit and file list (what `repo_info` needs
        when a commit turns out to change nothing)."""
        repo = self._repo(type, repo_id, rev)
        return {"id": repo_id, "sha": repo.head(), "private": False,
                "siblings": [{"rfilename": p} for p in sorted(repo.files())]}
