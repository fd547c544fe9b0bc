"""The kernel cache is verified before loading: a truncated, emptied, replaced (another valid library exporting the
same symbol) or unrecorded library is refused without a compiler and rebuilt with one, never dlopen-ed; a verified
build is found again without a compiler. The cases run in a subprocess (each in its own cache directory), where
loading a bad file could crash."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from visattn.ops import native

pytestmark = pytest.mark.skipif(native.available_compiler() is None or sys.platform == "win32",
                                reason="no C++ compiler (or Windows)")

NAME = "tile_attention_backward"  # the quickest build
NATIVE_PATH = Path(native.__file__)

# Loads ops/native.py by path (no visattn import); for each (cache directory, compilers) of argv[1] (JSON) asks for
# the library with each compiler in turn, running a call with no tiles through whatever was loaded.
SCRIPT = f"""
import importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("visattn_native_by_path", {str(NATIVE_PATH)!r})
native = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = native
spec.loader.exec_module(native)
import torch

def attempt(cache, compiler):
    os.environ["VISATTN_CACHE_DIR"] = cache
    os.environ["CXX"] = compiler
    native.native_library.cache_clear()
    lib = native.native_library({NAME!r})
    path = native.library_path({NAME!r})
    if lib is not None:
        z, i = torch.zeros(1, 1, 1, 8), torch.zeros(1, dtype=torch.int64)
        st = native.strides(z)
        native.call({NAME!r}, "visattn_tile_backward_f32", *[z] * 9, 1, 1, 8, 8, *[st] * 9, 0, i, i, i, i, i, i,
                    torch.zeros(0, dtype=torch.uint8), 0, 0, 0, 0.5, threads=1)
    return {{"loaded": lib is not None, "verified": native.verify(path)[0] is not None,
             "size": path.stat().st_size if path.exists() else -1}}

print(json.dumps([[attempt(cache, c) for c in compilers] for cache, compilers in json.loads(sys.argv[1])]))
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A cache holding a verified generic build of NAME, and a foreign library exporting the same symbol."""
    root = tmp_path_factory.mktemp("native-cache")
    env = {**os.environ, "VISATTN_ISA": "generic"}
    env.pop("VISATTN_REQUIRE_NATIVE", None)
    subprocess.run([sys.executable, "-c", SCRIPT, json.dumps([[str(root / "cache"), [native._compiler()]]])],
                   env=env, check=True, capture_output=True, timeout=600)
    foreign = root / "foreign.so"
    subprocess.run([native._compiler(), "-shared", "-fPIC", "-x", "c++", "-", "-o", str(foreign)],
                   input='extern "C" void visattn_tile_backward_f32() {}\n', text=True, check=True, timeout=120)
    return root


def _run(template: Path, tmp_path: Path, cases: dict, compilers: list[str]) -> tuple[dict, str]:
    """Per case name, the attempts' results with ``compilers`` on a copy of the template cache damaged by the case's
    function; and the log."""
    runs, libraries = [], {}
    for name, damage in cases.items():
        cache = tmp_path / name
        shutil.copytree(template / "cache", cache)
        libraries[name] = next(cache.glob(f"{NAME}-generic-*.so"))
        damage(libraries[name], template / "foreign.so")
        runs.append([str(cache), compilers])
    env = {**os.environ, "VISATTN_ISA": "generic"}
    env.pop("VISATTN_REQUIRE_NATIVE", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(runs)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    return {name: (result, libraries[name]) for name, result in zip(cases, results, strict=True)}, done.stderr


def _truncate(library: Path, foreign: Path) -> None:
    library.write_bytes(library.read_bytes()[: library.stat().st_size // 2])


def _empty(library: Path, foreign: Path) -> None:
    library.write_bytes(b"")


def _replace(library: Path, foreign: Path) -> None:
    shutil.copyfile(foreign, library)


def _unrecorded(library: Path, foreign: Path) -> None:
    native.hash_file(library).unlink()


@pytest.mark.slow
def test_a_bad_cached_library_is_refused_without_a_compiler_and_rebuilt_with_one(template, tmp_path):
    cases = {"truncate": _truncate, "empty": _empty, "replace": _replace, "unrecorded": _unrecorded}
    results, log = _run(template, tmp_path, cases, ["/nonexistent/c++", native._compiler()])
    for name, ((refused, rebuilt), library) in results.items():
        assert not refused["loaded"] and not refused["verified"], name
        assert rebuilt["loaded"] and rebuilt["verified"], name
        assert native.verify(library)[0] is not None, name
        assert f"refusing the cached {library}" in log, name
        assert f"the cached {library} failed verification" in log, name


def test_a_verified_build_is_found_again_without_a_compiler(template, tmp_path):
    results, log = _run(template, tmp_path, {"intact": lambda library, foreign: None}, ["/nonexistent/c++"])
    ((found,), library) = results["intact"]
    assert found["loaded"] and found["verified"]
    assert "refusing" not in log and "rebuilding" not in log
