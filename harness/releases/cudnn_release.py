"""cuDNN backend releases as environments: any release of ``nvidia-cudnn-cu13`` from the package
registry, reduced to the libraries SDPA loads, cached, and carried to a machine without network.

A wheel of ``nvidia-cudnn-cu13`` (520-670 MB) holds its libraries as plain files named by their
soname under ``nvidia/cudnn/lib/`` (9.28.1.4: ``libcudnn.so.9`` 0.1 MB, ``libcudnn_graph.so.9``
149 MB, ``libcudnn_engines_runtime_compiled.so.9`` 42 MB, ``libcudnn_heuristic.so.9`` 96 MB,
``libcudnn_engines_precompiled.so.9`` 260 MB, ``libcudnn_engines_tensor_ir.so.9`` 250 MB,
``libcudnn_adv/cnn/ops/ext.so.9``). The graph API's SDPA needs the first four (`SDPA_LIBRARIES`,
verified on an H200 for 9.24-9.26): the loader ``libcudnn.so.9`` finds the others by name
(``%s.so.9``) in its own folder. A process runs on such a release, beside torch's own cuDNN, when it
starts with ``LD_LIBRARY_PATH=<folder>`` and ``LD_PRELOAD`` of its ``libcudnn.so.9`` and
``libcudnn_graph.so.9`` (`harness.releases.environments.EnvSpec.process_env`); what it really loaded is read
back from the library in the results (the cuDNN adapter's ``versions()``).

Folders: ``$PAGED_BENCH_CUDNN_CACHE/<version>/`` (default ``~/.cache/paged-attn-bench/cudnn``), each
with the libraries and ``release.json`` (version, wheel, files, sizes, sha256).

    python -m harness.releases.cudnn_release fetch 9.28.1.4          # download (pip), keep the SDPA libraries
    python -m harness.releases.cudnn_release pack 9.28.1.4 --out kit # xz tarball in parts of at most 40 MiB
    python -m harness.releases.cudnn_release unpack kit/cudnn-9.28.1.4.tar.xz.part-*   # on the other machine
    python -m harness.releases.cudnn_release path 9.28.1.4           # the folder (fetching it if needed)
    python -m harness.releases.cudnn_release list                    # cached releases

Set ``PAGED_BENCH_CUDNN_EXTRA_LIBS`` (e.g. ``engines_precompiled``) to keep more of a wheel's libraries,
should a release move an SDPA engine out of the four.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Sequence

PACKAGE = "nvidia-cudnn-cu13"
CACHE_ENV = "PAGED_BENCH_CUDNN_CACHE"
DEFAULT_CACHE = Path("~/.cache/paged-attn-bench/cudnn")
EXTRA_LIBS_ENV = "PAGED_BENCH_CUDNN_EXTRA_LIBS"
WHEEL_LIB_DIR = "nvidia/cudnn/lib/"
SDPA_LIBRARIES: tuple[str, ...] = ("libcudnn", "libcudnn_graph", "libcudnn_engines_runtime_compiled",
                                   "libcudnn_heuristic")
"""Library stems the graph API's SDPA loads (the loader, the graph library, the runtime-compiled engines
that hold the fused attention kernels, the heuristics)."""
PRELOAD: tuple[str, ...] = ("libcudnn.so.9", "libcudnn_graph.so.9")
"""Preloaded so that torch's own ``libcudnn.so.9`` (loaded by soname when torch is imported) is this one."""
MANIFEST = "release.json"
PART_BYTES = 40 * 2**20
"""Largest archive part: well under one 64 MiB transfer to the GPU machine, with room for the tree."""
_VERSION = re.compile(r"^\d+\.\d+(\.\d+){0,2}$")
_LIBRARY = re.compile(r"^(?P<stem>libcudnn(?:_[a-z_]+)?)\.so(?:\.(?P<version>\d+(?:\.\d+)*))?$")


class ReleaseError(RuntimeError):
    """A release cannot be fetched, found or unpacked; the message is one line that says what to do."""


def is_version(text: str) -> bool:
    """'9.28.1.4', '9.28.1' or '9.28' (not a path)."""
    return bool(_VERSION.match(text.strip()))


def cache_root() -> Path:
    """Where released libraries are kept (``$PAGED_BENCH_CUDNN_CACHE`` or ~/.cache/paged-attn-bench/cudnn)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def wanted_stems(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The library stems to keep: `SDPA_LIBRARIES`, ``extra`` and ``$PAGED_BENCH_CUDNN_EXTRA_LIBS``
    (names with or without the ``libcudnn_`` prefix)."""
    names = list(SDPA_LIBRARIES)
    for item in [*extra, *os.environ.get(EXTRA_LIBS_ENV, "").split(",")]:
        item = item.strip()
        if item:
            stem = item if item.startswith("libcudnn") else f"libcudnn_{item}"
            if stem not in names:
                names.append(stem)
    return tuple(names)


@dataclass(frozen=True)
class Library:
    """One library of a wheel: the member it is read from and the file name it gets (``<stem>.so.<major>``,
    the name the loader opens)."""

    member: str
    name: str
    size: int


def select_libraries(members: Sequence[tuple[str, int]], stems: Sequence[str] = SDPA_LIBRARIES) -> list[Library]:
    """Pick the libraries to keep from a wheel's ``(name, size)`` members: per wanted stem the member
    under ``nvidia/cudnn/lib/`` named ``<stem>.so.<major>`` if the wheel has it, else its most specific
    versioned name, written as ``<stem>.so.<major>``. Raises `ReleaseError` naming what is missing."""
    found: dict[str, list[tuple[str, str, int]]] = {}
    for member, size in members:
        if not member.startswith(WHEEL_LIB_DIR) or member.endswith("/"):
            continue
        match = _LIBRARY.match(member[len(WHEEL_LIB_DIR):])
        if match and match["stem"] in stems and match["version"]:
            found.setdefault(match["stem"], []).append((member, match["version"], size))
    missing = [stem for stem in stems if stem not in found]
    if missing:
        raise ReleaseError(f"the wheel has no {', '.join(missing)} under {WHEEL_LIB_DIR} (has it the layout of "
                           f"{PACKAGE}?)")
    chosen = []
    for stem in stems:
        candidates = found[stem]
        exact = [c for c in candidates if "." not in c[1]]
        member, version, size = exact[0] if exact else max(candidates, key=lambda c: len(c[1].split(".")))
        chosen.append(Library(member=member, name=f"{stem}.so.{version.split('.')[0]}", size=size))
    return chosen


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wheel_version(wheel: zipfile.ZipFile, wheel_path: Path) -> str:
    for name in wheel.namelist():
        if name.endswith(".dist-info/METADATA"):
            for line in wheel.read(name).decode("utf-8", "replace").splitlines():
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    parts = wheel_path.name.split("-")
    if len(parts) > 1 and is_version(parts[1]):
        return parts[1]
    raise ReleaseError(f"{wheel_path.name}: cannot tell which cuDNN release it is (no METADATA Version)")


def extract_wheel(wheel_path: str | Path, cache: Path | None = None, *, extra: Iterable[str] = ()) -> Path:
    """Unpack the SDPA libraries of a ``nvidia-cudnn-cu13`` wheel into ``<cache>/<version>/`` with a
    manifest; returns the folder. Written into a temporary folder and renamed, so a folder with a
    manifest is always complete."""
    wheel_path = Path(wheel_path)
    try:
        wheel = zipfile.ZipFile(wheel_path)
    except (OSError, zipfile.BadZipFile) as error:
        raise ReleaseError(f"{wheel_path}: not a readable wheel ({error})") from error
    with wheel:
        version = _wheel_version(wheel, wheel_path)
        libraries = select_libraries([(i.filename, i.file_size) for i in wheel.infolist()], wanted_stems(extra))
        root = cache or cache_root()
        target = root / version
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
        staging.chmod(0o755)
        try:
            files = {}
            for library in libraries:
                destination = staging / library.name
                with wheel.open(library.member) as source, destination.open("wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
                destination.chmod(0o755)
                files[library.name] = {"bytes": destination.stat().st_size, "sha256": _sha256(destination),
                                       "member": library.member}
            manifest = {"package": PACKAGE, "version": version, "wheel": wheel_path.name, "files": files,
                        "preload": list(PRELOAD)}
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target


def _pip_failure(version: str, output: str) -> ReleaseError:
    text = output.lower()
    if "no matching distribution" in text or "could not find a version" in text:
        available = re.search(r"\(from versions: ([^)]*)\)", output)
        hint = f"; the registry has: {available.group(1)}" if available else ""
        return ReleaseError(f"{PACKAGE}=={version} does not exist on the package registry{hint}")
    offline = ("network is unreachable", "temporary failure in name resolution", "connection refused",
               "connectionerror", "max retries exceeded", "failed to establish a new connection",
               "name or service not known", "timed out")
    if any(word in text for word in offline):
        return ReleaseError(f"cannot download {PACKAGE}=={version}: no network here. Fetch and pack it on a "
                            "machine with network (python -m harness.releases.cudnn_release pack "
                            f"{version} --out DIR), carry the parts, and unpack them here")
    last = " ".join(output.strip().splitlines()[-1:]) or "no output"
    return ReleaseError(f"pip could not download {PACKAGE}=={version}: {last}")


def download_wheel(version: str, into: Path) -> Path:
    """``pip download nvidia-cudnn-cu13==VERSION --no-deps --only-binary=:all:`` into ``into``; the wheel's path."""
    command = [sys.executable, "-m", "pip", "download", f"{PACKAGE}=={version}", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", str(into)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    except subprocess.TimeoutExpired as error:
        raise ReleaseError(f"downloading {PACKAGE}=={version} took over an hour; stopped") from error
    wheels = sorted(into.glob("nvidia_cudnn_cu13-*.whl"))
    if done.returncode != 0 or not wheels:
        raise _pip_failure(version, f"{done.stdout}\n{done.stderr}")
    return wheels[0]


def release_info(folder: str | Path) -> dict:
    """The manifest of a release folder, or what the folder shows when it has none (a folder of libraries
    made by hand): ``{"version": ..., "files": {...}}`` (version None when unknown)."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if manifest.exists():
        return json.loads(manifest.read_text())
    files = {p.name: {"bytes": p.stat().st_size} for p in sorted(folder.glob("libcudnn*.so*"))}
    return {"package": None, "version": folder.name if is_version(folder.name) else None, "files": files}


def check_folder(folder: Path) -> Path:
    """A folder of cuDNN libraries usable as an environment: it has the preloaded libraries."""
    if not folder.is_dir():
        raise ReleaseError(f"cudnn={folder}: no such folder")
    missing = [name for name in PRELOAD if not (folder / name).exists()]
    if missing:
        raise ReleaseError(f"cudnn={folder}: the folder has no {', '.join(missing)} (need a folder of cuDNN 9 "
                           f"libraries: {', '.join(f'{s}.so.9' for s in SDPA_LIBRARIES)})")
    return folder.resolve()


def cached_release(version: str, cache: Path | None = None) -> Path | None:
    """The cached folder of ``version`` if complete (manifest present); '9.28' matches one cached '9.28.x.y'."""
    root = cache or cache_root()
    exact = root / version
    if (exact / MANIFEST).exists():
        return exact
    matches = [p for p in sorted(root.glob(f"{version}.*")) if (p / MANIFEST).exists()] if root.is_dir() else []
    return matches[0] if len(matches) == 1 else None


def ensure_release(version_or_dir: str | Path, *, cache: Path | None = None,
                   downloader: Callable[[str, Path], Path] = download_wheel, log: Callable[[str], None] | None = None
                   ) -> Path:
    """The folder of a cuDNN release's SDPA libraries: an existing folder as it is; a wheel file unpacked
    into the cache; a version from the cache, else downloaded (pip) and reduced to the SDPA libraries.
    Raises `ReleaseError` (one line: offline, no such version, not a wheel, missing libraries)."""
    text = str(version_or_dir).strip()
    if not text:
        raise ReleaseError("cudnn= needs a release version (e.g. 9.28.1.4), a folder of libraries or a wheel")
    if not is_version(text):
        path = Path(text).expanduser()
        if path.is_file() and path.suffix == ".whl":
            return extract_wheel(path, cache)
        return check_folder(path)
    found = cached_release(text, cache)
    if found is not None:
        return found
    if log:
        log(f"cuDNN {text}: not in {cache or cache_root()}; downloading {PACKAGE}=={text} (about 600 MB) ...")
    with tempfile.TemporaryDirectory(prefix="cudnn-wheel-") as scratch:
        wheel = downloader(text, Path(scratch))
        return extract_wheel(wheel, cache)


# ------------------------------------------------------------------------------------------ carrying


class _PartWriter(io.RawIOBase):
    """A write-only stream that rolls over to ``<prefix>aa``, ``<prefix>ab``, ... every ``part_bytes``
    (the names ``split`` gives, so ``cat <prefix>* | tar xJ`` also works)."""

    def __init__(self, prefix: Path, part_bytes: int):
        if part_bytes <= 0:
            raise ValueError(f"part size must be positive, got {part_bytes}")
        self.prefix, self.part_bytes, self.parts = prefix, part_bytes, []
        self._handle: BinaryIO | None = None
        self._left = 0

    def writable(self) -> bool:
        return True

    def _next(self) -> None:
        if self._handle:
            self._handle.close()
        index = len(self.parts)
        if index >= 26 * 26:
            raise ReleaseError("more than 676 parts: choose a larger part size")
        path = Path(f"{self.prefix}{chr(97 + index // 26)}{chr(97 + index % 26)}")
        self.parts.append(path)
        self._handle, self._left = path.open("wb"), self.part_bytes

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        written = 0
        while written < len(view):
            if self._handle is None or self._left == 0:
                self._next()
            chunk = view[written: written + self._left]
            self._handle.write(chunk)
            self._left -= len(chunk)
            written += len(chunk)
        return written

    def close(self) -> None:
        if self._handle:
            self._handle.close()
            self._handle = None
        super().close()


class _ExternalXz(io.RawIOBase):
    """Writes go to ``xz -T0`` (every core; python's lzma uses one), whose output a thread copies to ``sink``."""

    def __init__(self, sink: BinaryIO, preset: int):
        import threading

        self._process = subprocess.Popen(["xz", "-z", "-c", "-T0", f"-{preset}"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE)
        self._failure: list[BaseException] = []

        def pump() -> None:
            try:
                shutil.copyfileobj(self._process.stdout, sink, 1 << 20)
            except BaseException as error:  # noqa: BLE001 - re-raised in close()
                self._failure.append(error)

        self._thread = threading.Thread(target=pump, daemon=True)
        self._thread.start()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._process.stdin.write(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._process.stdin.close()
            self._thread.join()
            status = self._process.wait()
            super().close()
            if self._failure:
                raise self._failure[0]
            if status != 0:
                raise ReleaseError(f"xz failed with exit status {status}")


def _compressor(sink: BinaryIO, preset: int) -> BinaryIO:
    """An xz stream into ``sink``: the ``xz`` tool on every core where installed, else python's lzma."""
    if shutil.which("xz") and os.environ.get("PAGED_BENCH_PURE_LZMA") != "1":
        return _ExternalXz(sink, preset)
    return lzma.open(sink, "wb", preset=preset)


def archive_prefix(version: str) -> str:
    return f"cudnn-{version}.tar.xz.part-"


def pack_release(version_or_dir: str | Path, out: str | Path, *, part_bytes: int = PART_BYTES, preset: int = 6,
                 cache: Path | None = None, log: Callable[[str], None] | None = None) -> list[Path]:
    """Write a release's SDPA libraries (and manifest) as one xz tarball split into parts of at most
    ``part_bytes``: ``<out>/cudnn-<version>.tar.xz.part-aa``, ``-ab``, ...; returns the parts. The
    release is fetched first if it is not cached."""
    folder = ensure_release(version_or_dir, cache=cache, log=log)
    info = release_info(folder)
    version = info.get("version") or folder.name
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / archive_prefix(version)
    for stale in out.glob(f"{prefix.name}*"):
        stale.unlink()
    writer = _PartWriter(prefix, part_bytes)
    with writer, _compressor(writer, preset) as compressed, tarfile.open(fileobj=compressed, mode="w|") as tar:
        if not (folder / MANIFEST).exists():
            data = (json.dumps(info, indent=1) + "\n").encode()
            member = tarfile.TarInfo(f"cudnn-{version}/{MANIFEST}")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        for path in sorted(folder.iterdir()):
            if path.name == MANIFEST or path.name.startswith("libcudnn"):
                tar.add(path, arcname=f"cudnn-{version}/{path.name}")
    return writer.parts


def _parts_of(paths: Sequence[str | Path]) -> list[Path]:
    """The parts named (a folder means every ``cudnn-*.tar.xz.part-*`` in it), in order; one release only."""
    parts: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            parts += sorted(path.glob("cudnn-*.tar.xz.part-*"))
        elif path.exists():
            parts.append(path)
        else:
            raise ReleaseError(f"{path}: no such archive part")
    if not parts:
        raise ReleaseError("no archive parts given (cudnn-<version>.tar.xz.part-aa, -ab, ...)")
    prefixes = {p.name.rsplit(".part-", 1)[0] for p in parts}
    if len(prefixes) != 1:
        raise ReleaseError(f"parts of several archives given: {', '.join(sorted(prefixes))}; unpack one at a time")
    return sorted(dict.fromkeys(parts), key=lambda p: p.name)


class _Concatenated(io.RawIOBase):
    """The parts read back to back as one stream."""

    def __init__(self, parts: list[Path]):
        self._parts, self._handle = list(parts), None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self._handle is None:
                if not self._parts:
                    return 0
                self._handle = self._parts.pop(0).open("rb")
            count = self._handle.readinto(buffer)
            if count:
                return count
            self._handle.close()
            self._handle = None

    def close(self) -> None:
        if self._handle:
            self._handle.close()
        super().close()


def unpack_release(parts: Sequence[str | Path], cache: Path | None = None) -> Path:
    """Join the parts of a packed release and unpack them into ``<cache>/<version>/``; returns the folder.
    A missing or cut part is an error (the xz stream ends early), not a half release."""
    ordered = _parts_of(parts)
    version = ordered[0].name[len("cudnn-"):].rsplit(".tar.xz.part-", 1)[0]
    root = cache or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-unpack-", dir=root))
    staging.chmod(0o755)
    try:
        try:
            with _Concatenated(ordered) as stream, lzma.open(io.BufferedReader(stream), "rb") as data, \
                    tarfile.open(fileobj=data, mode="r|") as tar:
                for member in tar:
                    name = Path(member.name).name
                    if not member.isfile() or not (name == MANIFEST or name.startswith("libcudnn")):
                        continue
                    source = tar.extractfile(member)
                    with (staging / name).open("wb") as sink:
                        shutil.copyfileobj(source, sink, 1 << 20)
                    (staging / name).chmod(0o755)
        except (lzma.LZMAError, EOFError, tarfile.TarError) as error:
            raise ReleaseError(f"{ordered[0].name}...: the archive is cut or damaged ({type(error).__name__}: "
                               f"{error}); are all {len(ordered)} parts there?") from error
        check_folder(staging)
        info = release_info(staging)
        for name, facts in info.get("files", {}).items():
            if "sha256" in facts and _sha256(staging / name) != facts["sha256"]:
                raise ReleaseError(f"{name} does not match its checksum in the manifest: a damaged part?")
        target = root / (info.get("version") or version)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        return target
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def cached_releases(cache: Path | None = None) -> list[dict]:
    root = cache or cache_root()
    if not root.is_dir():
        return []
    return [{**release_info(p), "folder": str(p)} for p in sorted(root.iterdir()) if (p / MANIFEST).exists()]


# ------------------------------------------------------------------------------------------ command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.releases.cudnn_release", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download a release (or take a wheel file) and keep its SDPA libraries")
    fetch.add_argument("release", help="a version such as 9.28.1.4, or a nvidia_cudnn_cu13 wheel file")
    path = commands.add_parser("path", help="print a release's folder (fetching it if needed)")
    path.add_argument("release")
    pack = commands.add_parser("pack", help="write a release as an xz tarball in parts, for a machine without network")
    pack.add_argument("release")
    pack.add_argument("--out", required=True, help="folder for the parts")
    pack.add_argument("--part-mb", type=float, default=PART_BYTES / 2**20, help="largest part in MiB (default 40)")
    pack.add_argument("--preset", type=int, default=6, help="xz preset 0-9 (default 6)")
    unpack = commands.add_parser("unpack", help="join and unpack the parts into the cache")
    unpack.add_argument("parts", nargs="+", help="the parts (or the folder holding them)")
    commands.add_parser("list", help="the cached releases")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"cudnn-release: {message}", file=sys.stderr, flush=True)

    try:
        if args.command in ("fetch", "path"):
            folder = ensure_release(args.release, log=log)
            print(folder)
        elif args.command == "pack":
            parts = pack_release(args.release, args.out, part_bytes=int(args.part_mb * 2**20), preset=args.preset,
                                 log=log)
            for part in parts:
                print(f"{part}\t{part.stat().st_size}")
        elif args.command == "unpack":
            print(unpack_release(args.parts))
        else:
            for release in cached_releases():
                size = sum(f.get("bytes", 0) for f in release.get("files", {}).values())
                print(f"{release.get('version')}\t{size / 2**20:.0f} MiB\t{release['folder']}")
    except ReleaseError as error:
        log(str(error))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
