"""Environments a sweep runs in, beside the current one: another Python, extra package folders first
on the path, or another cuDNN backend release (`harness.releases.cudnn_release`).

    LABEL[,python=PATH][,pythonpath=DIR[:DIR...]][,cudnn=VERSION|DIR|WHEEL]

e.g. ``cudnn-9.19`` (this environment as it is, labelled), ``cudnn-9.28,cudnn=9.28.1.4`` (the
registry's 9.28.1.4, fetched and cached), ``fe-1.22,pythonpath=/tmp/fe122`` (another frontend first on
the path), ``local,cudnn=/opt/cudnn/lib`` (a folder of libraries). The label names the environment's
results folder and its rows (``PAGED_BENCH_ENV_LABEL``).

A cuDNN release runs in a process started with ``LD_LIBRARY_PATH`` = its folder and ``LD_PRELOAD`` =
its ``libcudnn.so.9`` and ``libcudnn_graph.so.9``: torch, imported later, finds that ``libcudnn.so.9``
already loaded, the frontend opens the one on ``LD_LIBRARY_PATH``, and the loader finds the engine
libraries beside it. What really ran is read back from the library into every row (the cuDNN
adapter's ``versions()``), not assumed from the request.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from harness.errors import UsageError
from harness.releases.cudnn_release import PRELOAD, ReleaseError, ensure_release, is_version

ENV_LABEL_VAR = "PAGED_BENCH_ENV_LABEL"
CUDNN_RELEASE_VAR = "PAGED_BENCH_CUDNN_RELEASE"
"""What the environment asked for (a version, folder or wheel), for the record beside what was loaded."""
CUDNN_DIR_VAR = "PAGED_BENCH_CUDNN_DIR"
OPTIONS = ("python", "pythonpath", "cudnn")
SYNTAX = "LABEL[,python=PATH][,pythonpath=DIRS][,cudnn=VERSION|DIR]"
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class EnvSpecError(UsageError):
    """An environment spec that does not parse; the message is one line naming the bad part and the choices."""


@dataclass(frozen=True)
class EnvSpec:
    """One environment: its ``label``, the ``python`` that runs it, folders put first on ``PYTHONPATH``,
    and the cuDNN release it runs on (``cudnn``: a version, a folder of libraries or a wheel; empty =
    the environment's own)."""

    label: str
    python: str = sys.executable
    pythonpath: str = ""
    cudnn: str = ""

    def describe(self) -> str:
        parts = [self.label]
        if self.python != sys.executable:
            parts.append(f"python={self.python}")
        parts += [f"{key}={getattr(self, key)}" for key in ("pythonpath", "cudnn") if getattr(self, key)]
        return ",".join(parts)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def release_dir(self, ensure: Callable[[str], Path] = ensure_release) -> Path | None:
        """The folder of the environment's cuDNN libraries (fetched into the cache if needed), or None."""
        return ensure(self.cudnn) if self.cudnn else None

    def process_env(self, base: dict[str, str], *, release_dir: Path | None = None) -> dict[str, str]:
        """``base`` (e.g. ``os.environ``) with what a process of this environment needs: the label,
        ``PYTHONPATH`` first, and for a cuDNN release ``LD_LIBRARY_PATH`` (its folder, then the NVRTC
        folders of this Python's CUDA packages, which the runtime-compiled engines open by name) and
        ``LD_PRELOAD`` of its ``libcudnn.so.9`` and ``libcudnn_graph.so.9``. ``release_dir`` defaults to
        `release_dir()` (which may fetch)."""
        env = dict(base)
        env[ENV_LABEL_VAR] = self.label
        if self.pythonpath:
            env["PYTHONPATH"] = _join(self.pythonpath, env.get("PYTHONPATH", ""))
        if self.cudnn:
            folder = Path(release_dir) if release_dir is not None else self.release_dir()
            env["LD_LIBRARY_PATH"] = _join(str(folder), *map(str, nvrtc_dirs()), env.get("LD_LIBRARY_PATH", ""))
            preload = ":".join(str(folder / name) for name in PRELOAD)
            env["LD_PRELOAD"] = _join(preload, env.get("LD_PRELOAD", ""))
            env[CUDNN_RELEASE_VAR] = self.cudnn
            env[CUDNN_DIR_VAR] = str(folder)
        return env


def _join(*parts: str) -> str:
    """Colon-joined search path without empty entries or repeats (first occurrence wins)."""
    seen: list[str] = []
    for part in parts:
        for item in part.split(os.pathsep):
            if item and item not in seen:
                seen.append(item)
    return os.pathsep.join(seen)


def nvrtc_dirs() -> list[Path]:
    """Folders of this Python's NVIDIA CUDA packages that hold ``libnvrtc.so.*`` (cuDNN's runtime-compiled
    engines open NVRTC by name; the wheel's own RUNPATH ``$ORIGIN/../../cu13/lib`` does not reach them
    from the release cache)."""
    found: list[Path] = []
    for root in map(Path, sys.path):
        for sub in ("nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"):
            folder = root / sub
            try:
                if folder.is_dir() and any(folder.glob("libnvrtc.so*")) and folder not in found:
                    found.append(folder)
            except OSError:
                continue
    return found


def parse_env_spec(text: str) -> EnvSpec:
    """``LABEL[,python=PATH][,pythonpath=DIRS][,cudnn=VERSION|DIR]`` -> `EnvSpec`; `EnvSpecError` names the
    bad part. Nothing is fetched or checked on disk here except that python= exists."""
    label, *options = [part.strip() for part in text.split(",")]
    if not label:
        raise EnvSpecError(f"environment {text!r} needs a label first: {SYNTAX}, e.g. 'cudnn-9.28,cudnn=9.28.1.4'")
    if "=" in label:
        raise EnvSpecError(f"environment {text!r} starts with an option ({label!r}); the label comes first: {SYNTAX}")
    if not _LABEL.match(label):
        raise EnvSpecError(f"environment label {label!r} may hold only letters, digits and . _ + - "
                           "(it names the results folder)")
    values: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in OPTIONS:
            raise EnvSpecError(f"environment option {option!r} of {label!r} is not one of python=PATH, "
                               "pythonpath=DIRS, cudnn=VERSION|DIR")
        if key in values:
            raise EnvSpecError(f"environment {label!r} sets {key}= twice")
        if not value:
            raise EnvSpecError(f"environment option {key}= of {label!r} is empty")
        values[key] = value
    cudnn = values.get("cudnn", "")
    if cudnn and not is_version(cudnn) and not _looks_like_path(cudnn):
        raise EnvSpecError(f"cudnn={cudnn} of {label!r} is neither a release version (e.g. 9.28.1.4) nor a "
                           "folder of libraries (a path)")
    python = values.get("python", sys.executable)
    if "python" in values and not Path(python).expanduser().exists():
        raise EnvSpecError(f"python={python} of {label!r}: no such file")
    return EnvSpec(label=label, python=str(Path(python).expanduser()) if "python" in values else python,
                   pythonpath=values.get("pythonpath", ""), cudnn=cudnn)


def _looks_like_path(text: str) -> bool:
    return "/" in text or text.startswith((".", "~")) or text.endswith(".whl")


def check_labels(specs: Sequence[EnvSpec]) -> None:
    """Labels name folders: they must differ."""
    seen: set[str] = set()
    for spec in specs:
        if spec.label in seen:
            raise EnvSpecError(f"two environments are labelled {spec.label!r}; labels name the results folders")
        seen.add(spec.label)


def run_environment(spec: EnvSpec, out_dir: str | Path, run_args: Sequence[str], *,
                    runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                    ensure: Callable[[str], Path] = ensure_release,
                    log: Callable[[str], None] | None = None) -> int:
    """Run ``python -m harness.frontends.cli run --out OUT_DIR RUN_ARGS...`` in environment ``spec`` (its own process,
    started in the project root, with `EnvSpec.process_env`); the exit status. A cuDNN release that
    cannot be fetched is exit status 2 with its reason logged, nothing run."""
    log = log or (lambda message: print(f"paged-bench: {message}", file=sys.stderr, flush=True))
    try:
        folder = spec.release_dir(ensure)
    except ReleaseError as error:
        log(f"environment {spec.label}: {error}")
        return 2
    env = spec.process_env(os.environ.copy(), release_dir=folder)
    command = [spec.python, "-m", "harness.frontends.cli", "run", "--out", str(Path(out_dir).resolve()), *run_args]
    shown = " ".join(command)
    if folder is not None:
        shown = f"LD_PRELOAD={env['LD_PRELOAD']} LD_LIBRARY_PATH={folder}:... {shown}"
    log(f"environment {spec.label}: {shown}")
    done = runner(command, env=env, cwd=str(PROJECT_ROOT))
    if done.returncode != 0:
        log(f"environment {spec.label} failed with exit status {done.returncode}")
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.releases.environments SPEC [--print] [-- COMMAND ...]``: run COMMAND in environment SPEC
    (e.g. ``asv run ...`` on a cuDNN release, which asv's benchmark processes inherit), or print the
    variables the environment sets. ``ASV_PYTHONPATH`` follows ``PYTHONPATH`` unless set (asv drops
    ``PYTHONPATH`` from its benchmark processes)."""
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(prog="python -m harness.releases.environments", description=main.__doc__)
    parser.add_argument("spec", help=SYNTAX)
    parser.add_argument("--print", action="store_true", help="print the variables the environment sets (shell syntax)")
    args = parser.parse_args(argv)
    try:
        spec = parse_env_spec(args.spec)
        env = spec.process_env(os.environ.copy())
    except (EnvSpecError, ReleaseError) as error:
        print(f"paged-bench: {error}", file=sys.stderr)
        return 2
    if "PYTHONPATH" in env and "ASV_PYTHONPATH" not in env:
        env["ASV_PYTHONPATH"] = env["PYTHONPATH"]
    if args.print or not command:
        import shlex

        for key in sorted(k for k in env if env[k] != os.environ.get(k)):
            print(f"export {key}={shlex.quote(env[key])}")
        return 0
    sys.stdout.flush()
    os.execvpe(command[0], command, env)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
