"""A fake Hugging Face Hub on 127.0.0.1 for the store tests, and tiny GGUF files for it to serve.

It answers what localllm (through huggingface_hub's session) asks of the real hub:
    GET  /api/models/{repo}/tree/{rev}?recursive=true   file list, with LFS sha256 and size
    GET  /api/models/{repo}/revision/{rev}               repo info (id, sha, siblings)
    HEAD /{repo}/resolve/{rev}/{file}                    X-Repo-Commit, ETag, X-Linked-Etag/-Size, Content-Length
    GET  /{repo}/resolve/{rev}/{file}                    the bytes, with Range -> 206 / 416
Knobs per file: `cut_after`/`cut_times` (drop the connection after that many bytes, that many times),
`serve` (bytes to send instead of the advertised ones: a corrupted upload), `pause_s` (a slow download).
A repo that doesn't exist gets 401 + X-Error-Code: RepoNotFound, as from the real hub. Every request is logged in `requests`.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HostedFile:
    data: bytes
    serve: bytes | None = None          # what GET actually sends (None: `data`)
    cut_after: int | None = None        # drop the connection after this many body bytes ...
    cut_times: int = 0                  # ... this many times
    pause_s: float = 0.0                # sleep half-way through the body (a slow download)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Logged:
    method: str
    path: str
    range: str | None


@dataclass
class FakeHub:
    repos: dict[str, dict[str, HostedFile]] = field(default_factory=dict)
    requests: list[Logged] = field(default_factory=list)

    def add(self, repo: str, filename: str, data: bytes, **knobs) -> HostedFile:
        f = HostedFile(data=data, **knobs)
        self.repos.setdefault(repo, {})[filename] = f
        return f

    def start(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def gets(self, filename: str) -> list[Logged]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + filename)]

    # request handling --------------------------------------------------------------------------------
    def _json(self, h, code: int, obj, headers: dict | None = None) -> None:
        body = json.dumps(obj).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        url = urlparse(h.path)
        path = unquote(url.path)
        self.requests.append(Logged("HEAD" if head else "GET", path, h.headers.get("Range")))
        if m := re.fullmatch(r"/api/models/(.+?)/tree/([^/]+)(/.*)?", path):
            return self._tree(h, m.group(1))
        if m := re.fullmatch(r"/api/models/(.+?)/revision/([^/]+)", path):
            return self._info(h, m.group(1))
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._file(h, m.group(1), m.group(3), head)
        self._json(h, 404, {"error": "not found"})

    def _repo(self, h, repo: str):
        # repo ids are case-insensitive on the hub (it redirects to the canonical spelling)
        files = next((v for k, v in self.repos.items() if k.lower() == repo.lower()), None)
        if files is None:
            # as the real hub answers anonymous requests for a repo that doesn't exist (or is private)
            self._json(h, 401, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        return files

    def _tree(self, h, repo: str) -> None:
        if (files := self._repo(h, repo)) is None:
            return
        out = [{"type": "file", "path": ".gitattributes", "size": 10, "oid": "a" * 40}]
        for name, f in sorted(files.items()):
            out.append({"type": "file", "path": name, "size": len(f.data),
                        "oid": hashlib.sha1(f.data).hexdigest(),
                        "lfs": {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}})
        self._json(h, 200, out)

    def _info(self, h, repo: str) -> None:
        if (files := self._repo(h, repo)) is None:
            return
        self._json(h, 200, {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": n} for n in files]},
                   {"X-Repo-Commit": COMMIT})

    def _file(self, h, repo: str, filename: str, head: bool) -> None:
        if (files := self._repo(h, repo)) is None:
            return
        f = files.get(filename)
        if f is None:
            return self._json(h, 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        body = f.serve if f.serve is not None else f.data
        size = len(body)
        start, status = 0, 200
        rng = h.headers.get("Range")
        if rng and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())):
            start = int(m.group(1))
            if start >= size:
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{size}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            end = int(m.group(2)) + 1 if m.group(2) else size
            body, status = body[start:end], 206
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", f'"{f.sha256}"')
        h.send_header("X-Linked-Etag", f'"{f.sha256}"')
        h.send_header("X-Linked-Size", str(len(f.data)))
        h.send_header("X-Repo-Commit", COMMIT)
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{size}")
        h.end_headers()
        if head:
            return
        if f.cut_after is not None and f.cut_times > 0:
            f.cut_times -= 1
            h.wfile.write(body[:f.cut_after])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)   # the client sees a body shorter than Content-Length
            return
        if f.pause_s:
            h.wfile.write(body[:len(body) // 2])
            h.wfile.flush()
            time.sleep(f.pause_s)
            body = body[len(body) // 2:]
        h.wfile.write(body)


def make_gguf(path: Path, *, name: str = "Tiny Test", arch: str = "llama", n_embd: int = 64,
              n_ctx: int = 256, license: str = "apache-2.0", pad_bytes: int = 0) -> Path:
    """A tiny, valid GGUF: llama-style metadata, a chat template, and a few F32/F16/Q8_0 tensors.

    `pad_bytes` adds an F32 tensor of that size, to make a file big enough to interrupt mid-way.
    """
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_license(license)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(1)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_chat_template("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>")
    w.add_token_list(["<unk>", "<s>", "</s>", "a", "b"])
    w.add_tensor("token_embd.weight", rng.standard_normal((5, n_embd), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, dtype=np.float32).astype(np.float16))
    q = rng.standard_normal((n_embd, n_embd), dtype=np.float32)
    for t in ("attn_q", "attn_k"):
        w.add_tensor(f"blk.0.{t}.weight", gguf.quants.quantize(q, gguf.GGMLQuantizationType.Q8_0),
                     raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    if pad_bytes:
        w.add_tensor("pad.weight", rng.standard_normal(pad_bytes // 4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# pytest fixtures (import them into a test module to use them) ---------------------------------------
import pytest  # noqa: E402

REPO = "test/Tiny-GGUF"
Q4 = "tiny-Q4_K_M.gguf"
Q8 = "tiny-Q8_0.gguf"


@pytest.fixture(scope="session")
def tiny_ggufs(tmp_path_factory) -> dict[str, bytes]:
    """Two small, distinct GGUFs (about 1 MiB each, so a download can be cut half-way)."""
    d = tmp_path_factory.mktemp("ggufs")
    return {Q4: make_gguf(d / Q4, name="Tiny Q4", pad_bytes=1 << 20).read_bytes(),
            Q8: make_gguf(d / Q8, name="Tiny Q8", pad_bytes=1 << 20).read_bytes()}


@dataclass
class HubEnv:
    hub: FakeHub
    home: Path           # LOCALLLM_HOME
    hf_home: Path        # HF_HOME
    manifests: Path      # LOCALLLM_MANIFESTS
    data: bytes          # the bytes behind the "tiny" manifest
    sha256: str

    def environ(self) -> dict:
        import os
        env = dict(os.environ)
        env.update(LOCALLLM_HOME=str(self.home), HF_HOME=str(self.hf_home), HF_ENDPOINT=self.hub.url,
                   LOCALLLM_MANIFESTS=str(self.manifests))
        env.pop("HF_HUB_OFFLINE", None)
        env.pop("HF_HUB_CACHE", None)
        return env

    def write_manifest(self, name: str, **fields) -> None:
        (self.manifests / f"{name.replace(':', '-')}.json").write_text(json.dumps({"name": name, **fields}))


@pytest.fixture
def hub_env(tmp_path, monkeypatch, tiny_ggufs):
    """A fake hub serving test/Tiny-GGUF, a manifest `tiny:test` (alias `tiny`, the default) for its
    Q4_K_M file with a PyPI mirror entry, and an empty store and HF cache, all under tmp_path."""
    hub = FakeHub()
    for name, data in tiny_ggufs.items():
        hub.add(REPO, name, data)
    hub.start()
    env = HubEnv(hub=hub, home=tmp_path / "home", hf_home=tmp_path / "hf", manifests=tmp_path / "manifests",
                 data=tiny_ggufs[Q4], sha256=hashlib.sha256(tiny_ggufs[Q4]).hexdigest())
    env.manifests.mkdir()
    env.write_manifest("tiny:test", aliases=["tiny"], default=True, description="a test model",
                       file="tiny.gguf", sha256=env.sha256, size=len(env.data),
                       hf={"repo": REPO, "file": Q4},
                       pypi={"wheels": ["tiny-gguf==1.0"], "members": ["tiny_gguf/tiny.gguf"]})
    for k, v in env.environ().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("LOCALLLM_DOWNLOAD_RETRIES", "3")
    try:
        yield env
    finally:
        hub.stop()


def closed_port_url() -> str:
    """An http://127.0.0.1 URL where nothing listens: a hub that can't be reached."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def put_in_hf_cache(hf_home: Path, repo: str, filename: str, data: bytes) -> Path:
    """Lay a file out the way huggingface_hub's cache does (blobs + snapshot symlink + refs/main)."""
    base = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    sha = hashlib.sha256(data).hexdigest()
    (base / "blobs").mkdir(parents=True, exist_ok=True)
    (base / "blobs" / sha).write_bytes(data)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(COMMIT)
    snap = base / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    link = snap / filename
    link.symlink_to(Path("..") / ".." / "blobs" / sha)
    return link
