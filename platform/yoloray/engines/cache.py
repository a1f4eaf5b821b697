"""A cache of built engine artifacts that a whole cluster shares: ONNX exports, int8 models, TensorRT engine
and timing caches, torch.compile artifacts. The first actor, replica or job to need one builds it; every
later one loads it.

Where: `cache_dir` of the engine config, else `$YOLORAY_CACHE`, else `~/.cache/yoloray`. A plain path is used in
place (a volume every node mounts works as it is); a URI pyarrow opens (`s3://bucket/yoloray-cache`, `gs://...`,
`hdfs://...`, `file:///...`) is read and written through pyarrow, and its artifacts are copied to a local staging
folder (`~/.cache/yoloray/remote/<hash of the URI>`) before use.

Key: the artifact's kind, the engine fields that change it, and the environment that could make it invalid
(`environment`: library versions, and for device-specific artifacts the GPU's name and compute capability,
CUDA, cuDNN and TensorRT versions). An entry is written to a temporary name and renamed when complete, so a
reader never sees half an artifact. On one node a file lock makes concurrent builders of the same entry wait
for the first; on a remote store two nodes may both build at once (the last rename wins; both are the same).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow.fs as pafs

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout of an artifact changes
LOCAL_DEFAULT = "~/.cache/yoloray"


def default_root() -> str:
    return os.environ.get("YOLORAY_CACHE") or os.path.expanduser(LOCAL_DEFAULT)


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def tensorrt_version() -> str | None:
    """The TensorRT library ONNX Runtime's TensorRT provider would load, if one is on the library path."""
    import ctypes

    for name in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"):
        try:
            v = ctypes.CDLL(name).getInferLibVersion()
        except (OSError, AttributeError):
            continue
        return f"{v // 10000}.{v // 100 % 100}.{v % 100}" if v >= 10000 else f"{v // 1000}.{v // 100 % 10}.{v % 100}"
    return None


def environment(device=None, packages: tuple[str, ...] = ("torch", "ultralytics", "onnx", "onnxruntime",
                                                           "onnxruntime-gpu")) -> dict:
    """What could make a built artifact invalid: library versions, and on a GPU its architecture."""
    env: dict = {"format": FORMAT, **{p: _version(p) for p in packages}}
    if device is not None and getattr(device, "type", device) == "cuda":
        import torch

        index = getattr(device, "index", None) or 0
        major, minor = torch.cuda.get_device_capability(index)
        env.update(gpu=torch.cuda.get_device_name(index), sm=f"{major}{minor}", cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), tensorrt=tensorrt_version())
    elif device is not None:  # code compiled for this CPU's instruction set
        import platform

        import torch

        env.update(cpu=platform.machine(), isa=torch.backends.cpu.get_cpu_capability())
    return env


def cache_key(kind: str, fields: dict, env: dict) -> str:
    blob = json.dumps({"kind": kind, "fields": fields, "env": env}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class ArtifactCache:
    """Files and folders of built artifacts under `root` (local path or pyarrow URI); see the module doc."""

    def __init__(self, root: str | None = None, staging: str | None = None):
        self.uri = root or default_root()
        if "://" in self.uri:  # read and written through pyarrow, used from a local staging copy
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
            tag = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
            self.local = Path(staging or os.path.expanduser(f"{LOCAL_DEFAULT}/remote/{tag}"))
        else:  # a local folder (or a shared volume mounted as one), used in place
            self.fs, self.root = None, os.path.abspath(os.path.expanduser(self.uri))
            self.local = Path(self.root)
        self.local.mkdir(parents=True, exist_ok=True)
        self.events: list[tuple[str, str, str]] = []  # (kind, key, "hit" | "built"), in order

    # ------------------------------------------------------------------ files
    def file(self, kind: str, key: str, name: str, build: Callable[[Path], None]) -> Path:
        """Local path of artifact `kind/key/name`: loaded when present, else `build(path)` writes it (then it is
        stored for everyone else)."""
        final = self.local / kind / key / name
        with self._lock(kind, key):
            if final.is_file() or self._pull_file(f"{kind}/{key}/{name}", final):
                self.events.append((kind, key, "hit"))
                return final
            work = final.parent.with_name(f".{key}.{uuid.uuid4().hex[:8]}")
            work.mkdir(parents=True)
            try:
                build(work / name)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(work / name, final)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            self._push_file(final, f"{kind}/{key}/{name}")
            self.events.append((kind, key, "built"))
            log.info("built %s artifact %s", kind, final)
            return final

    def blob(self, kind: str, key: str) -> bytes | None:
        """The bytes stored under `kind/key`, or None (a miss)."""
        path = self.local / kind / key / "blob"
        if path.is_file() or self._pull_file(f"{kind}/{key}/blob", path):
            self.events.append((kind, key, "hit"))
            return path.read_bytes()
        return None

    def put_blob(self, kind: str, key: str, data: bytes) -> None:
        path = self.local / kind / key / "blob"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".blob.{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self._push_file(path, f"{kind}/{key}/blob")
        self.events.append((kind, key, "built"))

    # ---------------------------------------------------------------- folders
    def folder(self, kind: str, key: str) -> Path:
        """A local folder for a tool that keeps its own cache files (TensorRT engine and timing caches), filled
        with what the shared cache holds under `kind/key`; call `push_folder` after the tool wrote to it."""
        path = self.local / kind / key
        path.mkdir(parents=True, exist_ok=True)
        if self.fs is not None:
            remote = f"{self.root}/{kind}/{key}"
            for info in self.fs.get_file_info(pafs.FileSelector(remote, allow_not_found=True, recursive=True)):
                if info.type == pafs.FileType.File:
                    rel = info.path[len(remote) + 1:]
                    self._pull_file(f"{kind}/{key}/{rel}", path / rel)
        return path

    def push_folder(self, kind: str, key: str) -> int:
        """Store the files of the local folder `kind/key` that the shared cache lacks; returns how many."""
        if self.fs is None:
            return 0
        path, n = self.local / kind / key, 0
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = f.relative_to(path).as_posix()
            remote = f"{self.root}/{kind}/{key}/{rel}"
            if self.fs.get_file_info(remote).type != pafs.FileType.File:
                self._push_file(f, f"{kind}/{key}/{rel}")
                n += 1
        return n

    # ---------------------------------------------------------------- internals
    @contextlib.contextmanager
    def _lock(self, kind: str, key: str):
        lock = self.local / kind / f".{key}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _pull_file(self, rel: str, dest: Path) -> bool:
        if self.fs is None:
            return False
        src = f"{self.root}/{rel}"
        if self.fs.get_file_info(src).type != pafs.FileType.File:
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}")
        with self.fs.open_input_stream(src) as r, open(tmp, "wb") as w:
            shutil.copyfileobj(r, w, 1 << 20)
        os.replace(tmp, dest)
        return True

    def _push_file(self, src: Path, rel: str) -> None:
        if self.fs is None:
            return
        dest = f"{self.root}/{rel}"
        tmp = f"{dest}.{uuid.uuid4().hex[:8]}.tmp"
        self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
        with open(src, "rb") as r, self.fs.open_output_stream(tmp) as w:
            shutil.copyfileobj(r, w, 1 << 20)
        self.fs.move(tmp, dest)
