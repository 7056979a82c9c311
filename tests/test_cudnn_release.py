"""cuDNN releases as environments, on a small fake wheel with the real wheel's layout: the library
selection, the cache, download errors, packing into parts and unpacking; the environment spec's
parsing and the process environment of a release."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from harness.releases import cudnn_release
from harness.releases.cudnn_release import (MANIFEST, PRELOAD, ReleaseError, ensure_release, extract_wheel,
                                            pack_release, select_libraries, unpack_release)
from harness.releases.environments import (CUDNN_DIR_VAR, CUDNN_RELEASE_VAR, ENV_LABEL_VAR, EnvSpec, EnvSpecError,
                                           parse_env_spec, run_environment)

# The file list of nvidia_cudnn_cu13-9.28.1.4-py3-none-manylinux_2_27_x86_64.whl (sizes in the real wheel:
# libcudnn.so.9 137 kB, graph 149 MB, runtime-compiled engines 42 MB, heuristic 96 MB, precompiled 260 MB,
# tensor_ir 250 MB, adv 92 MB, ops 36 MB, ext 10 MB, cnn 4 MB).
WHEEL_LIBS = ["libcudnn.so.9", "libcudnn_adv.so.9", "libcudnn_cnn.so.9", "libcudnn_engines_precompiled.so.9",
              "libcudnn_engines_runtime_compiled.so.9", "libcudnn_engines_tensor_ir.so.9", "libcudnn_ext.so.9",
              "libcudnn_graph.so.9", "libcudnn_heuristic.so.9", "libcudnn_ops.so.9"]
KEPT = {"libcudnn.so.9", "libcudnn_graph.so.9", "libcudnn_engines_runtime_compiled.so.9", "libcudnn_heuristic.so.9"}


def fake_wheel(folder: Path, version: str = "9.28.1.4", libs=WHEEL_LIBS, size: int = 3000) -> Path:
    """A zip with the real wheel's layout: headers, nvidia/cudnn/lib/*.so.9 of dummy bytes (each its own
    content, incompressible enough to need several parts when packed small), dist-info."""
    path = folder / f"nvidia_cudnn_cu13-{version}-py3-none-manylinux_2_27_x86_64.whl"
    info = f"nvidia_cudnn_cu13-{version}.dist-info"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr("nvidia/cudnn/include/cudnn.h", "/* cudnn */\n")
        wheel.writestr("nvidia/cudnn/include/cudnn_version.h", "#define CUDNN_MAJOR 9\n")
        for index, name in enumerate(libs):
            wheel.writestr(f"nvidia/cudnn/lib/{name}", os.urandom(size) + name.encode() * (index + 1))
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: nvidia-cudnn-cu13\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\n")
        wheel.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(cudnn_release.CACHE_ENV, str(folder))
    monkeypatch.delenv(cudnn_release.EXTRA_LIBS_ENV, raising=False)
    return folder


# ------------------------------------------------------------------------------------------ selection

def test_selection_keeps_the_four_sdpa_libraries_by_their_loader_names():
    members = [(f"nvidia/cudnn/lib/{name}", 10) for name in WHEEL_LIBS] + [("nvidia/cudnn/include/cudnn.h", 1)]
    chosen = select_libraries(members)
    assert {lib.name for lib in chosen} == KEPT
    assert all(lib.member == f"nvidia/cudnn/lib/{lib.name}" for lib in chosen)


def test_selection_renames_a_fully_versioned_file_to_its_soname():
    members = [("nvidia/cudnn/lib/libcudnn.so.9", 1), ("nvidia/cudnn/lib/libcudnn_graph.so.9.30.0", 5),
               ("nvidia/cudnn/lib/libcudnn_engines_runtime_compiled.so.9", 1),
               ("nvidia/cudnn/lib/libcudnn_heuristic.so.9", 1)]
    graph = next(lib for lib in select_libraries(members) if lib.name.startswith("libcudnn_graph"))
    assert graph.name == "libcudnn_graph.so.9" and graph.member.endswith("libcudnn_graph.so.9.30.0")


def test_selection_names_what_is_missing():
    members = [(f"nvidia/cudnn/lib/{name}", 1) for name in WHEEL_LIBS if "heuristic" not in name]
    with pytest.raises(ReleaseError, match="libcudnn_heuristic"):
        select_libraries(members)


def test_extra_libraries_by_environment(cache, tmp_path, monkeypatch):
    monkeypatch.setenv(cudnn_release.EXTRA_LIBS_ENV, "engines_precompiled")
    folder = extract_wheel(fake_wheel(tmp_path))
    assert (folder / "libcudnn_engines_precompiled.so.9").exists()


# ------------------------------------------------------------------------------------------ the cache

def test_wheel_is_reduced_to_the_sdpa_libraries_with_a_manifest(cache, tmp_path):
    wheel = fake_wheel(tmp_path)
    folder = ensure_release(str(wheel))
    assert folder == cache / "9.28.1.4"
    assert {p.name for p in folder.iterdir()} == KEPT | {MANIFEST}
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["version"] == "9.28.1.4" and set(manifest["files"]) == KEPT
    with zipfile.ZipFile(wheel) as source:
        assert (folder / "libcudnn_graph.so.9").read_bytes() == source.read("nvidia/cudnn/lib/libcudnn_graph.so.9")
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_version_is_downloaded_once_then_read_from_the_cache(cache, tmp_path):
    calls = []

    def downloader(version, into):
        calls.append(version)
        return fake_wheel(into, version)

    first = ensure_release("9.24.1.1", downloader=downloader)
    second = ensure_release("9.24.1.1", downloader=downloader)
    assert first == second == cache / "9.24.1.1" and calls == ["9.24.1.1"]
    assert ensure_release("9.24.1", downloader=downloader) == first  # a shorter version finds the one cached release


def test_a_folder_of_libraries_is_used_as_it_is(tmp_path):
    folder = tmp_path / "libs"
    folder.mkdir()
    for name in PRELOAD:
        (folder / name).write_bytes(b"x")
    assert ensure_release(str(folder)) == folder.resolve()
    (folder / "libcudnn_graph.so.9").unlink()
    with pytest.raises(ReleaseError, match="libcudnn_graph.so.9"):
        ensure_release(str(folder))
    with pytest.raises(ReleaseError, match="no such folder"):
        ensure_release(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("output,words", [
    ("ERROR: Could not find a version that satisfies the requirement nvidia-cudnn-cu13==9.99.0.1 (from versions: "
     "9.12.0.46, 9.28.1.4)\nERROR: No matching distribution found for nvidia-cudnn-cu13==9.99.0.1",
     "does not exist on the package registry; the registry has: 9.12.0.46, 9.28.1.4"),
    ("WARNING: Retrying ... Failed to establish a new connection: [Errno 101] Network is unreachable",
     "no network here"),
    ("ERROR: something else entirely", "pip could not download nvidia-cudnn-cu13==9.99.0.1: ERROR: something else"),
])
def test_download_failures_say_why_in_one_line(output, words):
    error = cudnn_release._pip_failure("9.99.0.1", output)
    assert words in str(error) and "\n" not in str(error)


def test_download_runs_pip_download_without_dependencies(tmp_path, monkeypatch):
    seen = {}

    def fake_run(command, **kwargs):
        seen["command"] = command
        fake_wheel(Path(command[command.index("--dest") + 1]), "9.26.1.1")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(cudnn_release.subprocess, "run", fake_run)
    wheel = cudnn_release.download_wheel("9.26.1.1", tmp_path)
    assert wheel.name.startswith("nvidia_cudnn_cu13-9.26.1.1")
    assert seen["command"][1:5] == ["-m", "pip", "download", "nvidia-cudnn-cu13==9.26.1.1"]
    assert "--no-deps" in seen["command"] and "--only-binary=:all:" in seen["command"]


def test_a_broken_wheel_is_refused(cache, tmp_path):
    bad = tmp_path / "nvidia_cudnn_cu13-9.1.0-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ReleaseError, match="not a readable wheel"):
        ensure_release(str(bad))


# ------------------------------------------------------------------------------------------ carrying

@pytest.mark.parametrize("pure_lzma", ["1", "0"], ids=["python-lzma", "xz-tool-if-installed"])
def test_pack_in_parts_and_unpack_elsewhere(tmp_path, monkeypatch, pure_lzma):
    here, there = tmp_path / "here", tmp_path / "there"
    monkeypatch.setenv(cudnn_release.CACHE_ENV, str(here))
    monkeypatch.setenv("PAGED_BENCH_PURE_LZMA", pure_lzma)
    folder = ensure_release(str(fake_wheel(tmp_path, size=40_000)))
    parts = pack_release("9.28.1.4", tmp_path / "kit", part_bytes=20_000, preset=0)
    assert len(parts) >= 3 and all(p.stat().st_size <= 20_000 for p in parts)
    assert [p.name[-2:] for p in parts[:3]] == ["aa", "ab", "ac"]
    unpacked = unpack_release(list(reversed(parts)), cache=there)  # order comes from the names
    assert unpacked == there / "9.28.1.4"
    for name in KEPT:
        assert (unpacked / name).read_bytes() == (folder / name).read_bytes()
    # the folder form and the CLI
    assert unpack_release([tmp_path / "kit"], cache=tmp_path / "again") == tmp_path / "again" / "9.28.1.4"


def test_a_missing_part_is_an_error_not_half_a_release(tmp_path, monkeypatch):
    monkeypatch.setenv(cudnn_release.CACHE_ENV, str(tmp_path / "here"))
    ensure_release(str(fake_wheel(tmp_path, size=40_000)))
    parts = pack_release("9.28.1.4", tmp_path / "kit", part_bytes=20_000, preset=0)
    with pytest.raises(ReleaseError, match="cut or damaged"):
        unpack_release(parts[:-1], cache=tmp_path / "there")
    assert not (tmp_path / "there" / "9.28.1.4").exists()


def test_command_line_fetch_list_and_errors(cache, tmp_path, capsys):
    wheel = fake_wheel(tmp_path)
    assert cudnn_release.main(["fetch", str(wheel)]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "9.28.1.4")
    assert cudnn_release.main(["list"]) == 0
    assert "9.28.1.4" in capsys.readouterr().out
    assert cudnn_release.main(["path", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ environments

@pytest.mark.parametrize("text,expected", [
    ("cudnn-9.19", EnvSpec(label="cudnn-9.19")),
    ("cudnn-9.28,cudnn=9.28.1.4", EnvSpec(label="cudnn-9.28", cudnn="9.28.1.4")),
    ("local, cudnn=/opt/cudnn/lib", EnvSpec(label="local", cudnn="/opt/cudnn/lib")),
    ("fe-1.22,pythonpath=/tmp/fe122:/tmp/x", EnvSpec(label="fe-1.22", pythonpath="/tmp/fe122:/tmp/x")),
])
def test_env_spec_parses(text, expected):
    assert parse_env_spec(text) == expected


@pytest.mark.parametrize("text,words", [
    ("", "needs a label first"),
    ("cudnn=9.28.1.4", "the label comes first"),
    ("my label", "only letters, digits"),
    ("a,cudnn9.28", "is not one of python=PATH, pythonpath=DIRS, cudnn=VERSION|DIR"),
    ("a,torch=2.11", "is not one of python=PATH"),
    ("a,cudnn=", "is empty"),
    ("a,cudnn=9.28.1.4,cudnn=9.19.0", "twice"),
    ("a,cudnn=latest", "neither a release version (e.g. 9.28.1.4) nor a folder"),
    ("a,python=/no/such/python", "no such file"),
])
def test_env_spec_errors_name_the_bad_part(text, words):
    with pytest.raises(EnvSpecError, match=words.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")) as info:
        parse_env_spec(text)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_process_env_of_a_release(tmp_path):
    spec = EnvSpec(label="cudnn-9.28", cudnn="9.28.1.4", pythonpath="/tmp/fe")
    env = spec.process_env({"LD_LIBRARY_PATH": "/usr/lib/x", "LD_PRELOAD": "/lib/other.so", "PYTHONPATH": "/p"},
                           release_dir=tmp_path)
    assert env[ENV_LABEL_VAR] == "cudnn-9.28" and env[CUDNN_RELEASE_VAR] == "9.28.1.4"
    assert env[CUDNN_DIR_VAR] == str(tmp_path)
    assert env["LD_LIBRARY_PATH"].split(":")[0] == str(tmp_path) and env["LD_LIBRARY_PATH"].endswith("/usr/lib/x")
    assert env["LD_PRELOAD"] == f"{tmp_path}/libcudnn.so.9:{tmp_path}/libcudnn_graph.so.9:/lib/other.so"
    assert env["PYTHONPATH"] == "/tmp/fe:/p"
    plain = EnvSpec(label="own").process_env({"LD_PRELOAD": "/lib/other.so"})
    assert plain["LD_PRELOAD"] == "/lib/other.so" and CUDNN_DIR_VAR not in plain


def test_run_environment_starts_the_sweep_on_the_release(cache, tmp_path):
    folder = ensure_release(str(fake_wheel(tmp_path)))
    seen = {}

    def runner(command, env, cwd):
        seen.update(command=command, env=env, cwd=cwd)
        return subprocess.CompletedProcess(command, 0)

    spec = parse_env_spec("cudnn-9.28,cudnn=9.28.1.4")
    status = run_environment(spec, tmp_path / "out", ["--sweep", "short"], runner=runner, log=lambda m: None)
    assert status == 0
    assert seen["command"][:5] == [sys.executable, "-m", "harness.frontends.cli", "run", "--out"]
    assert seen["command"][-2:] == ["--sweep", "short"]
    assert seen["env"]["LD_PRELOAD"].startswith(f"{folder}/libcudnn.so.9:{folder}/libcudnn_graph.so.9")
    assert Path(seen["cwd"], "harness", "frontends", "cli.py").exists()


def test_run_environment_reports_an_unfetchable_release(tmp_path):
    messages = []

    def ensure(version):
        raise ReleaseError(f"nvidia-cudnn-cu13=={version} does not exist on the package registry")

    status = run_environment(EnvSpec(label="x", cudnn="9.99.0.1"), tmp_path, [], ensure=ensure,
                             runner=lambda *a, **k: pytest.fail("nothing may run"), log=messages.append)
    assert status == 2 and "does not exist" in messages[0]
