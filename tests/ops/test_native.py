"""Building and loading the C++ kernels: cached per source and CPU, and a clean fallback where they cannot build."""

from __future__ import annotations

import logging

import pytest

from visattn.ops import native


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache and an uncached ``native_library``."""
    monkeypatch.setenv("VISATTN_CACHE_DIR", str(tmp_path))
    native.native_library.cache_clear()
    yield tmp_path
    native.native_library.cache_clear()


@pytest.mark.skipif(native._compiler() is None or not native.has_avx512(), reason="no C++ compiler or AVX-512")
def test_builds_once_into_the_cache_dir(fresh):
    lib = native.native_library("local_attention")
    assert lib is not None and hasattr(lib, "visattn_local_forward_f32")
    built = list(fresh.glob("local_attention-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    native.native_library.cache_clear()
    assert native.native_library("local_attention") is not None
    assert built[0].stat().st_mtime_ns == stamp


def test_disabled_by_environment(fresh, monkeypatch):
    monkeypatch.setenv("VISATTN_NATIVE", "0")
    assert native.native_library("local_attention") is None


@pytest.mark.parametrize(("attribute", "value", "message"), [
    ("_cpu_flags", lambda: "flags : fpu sse sse2 avx avx2 fma", "need AVX-512"),
    ("_compiler", lambda: None, "no C++ compiler"),
])
def test_falls_back_with_a_warning_without_avx512_or_compiler(fresh, monkeypatch, caplog, attribute, value, message):
    monkeypatch.setattr(native, attribute, value)
    with caplog.at_level(logging.WARNING, logger="visattn"):
        assert native.native_library("tile_attention") is None
    assert message in caplog.text
    assert not list(fresh.glob("*.so"))


def test_failing_build_falls_back_with_the_compiler_message(fresh, monkeypatch, caplog):
    monkeypatch.setattr(native, "_compiler", lambda: "false")
    with caplog.at_level(logging.WARNING, logger="visattn"):
        assert native.native_library("local_attention") is None
    assert "building the local_attention kernel failed" in caplog.text
    assert not list(fresh.glob("*.so"))
