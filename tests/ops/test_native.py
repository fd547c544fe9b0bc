"""Building and loading the C++ kernels: ISA levels, the cache, typed signatures and argument checks, and a clean
fallback (or a RuntimeError under VISATTN_REQUIRE_NATIVE) where they cannot build."""

from __future__ import annotations

import ctypes
import logging
import math
import re
import stat

import numpy as np
import pytest
import torch

from visattn.ops import native

needs_compiler = pytest.mark.skipif(native.available_compiler() is None, reason="no C++ compiler")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache (a directory not yet created), an uncached ``native_library`` and level, and no
    VISATTN_REQUIRE_NATIVE or VISATTN_ISA from the session."""
    monkeypatch.setenv("VISATTN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VISATTN_REQUIRE_NATIVE", raising=False)
    monkeypatch.delenv("VISATTN_ISA", raising=False)
    native.native_library.cache_clear()
    native._resolve_level.cache_clear()
    yield tmp_path / "cache"
    native.native_library.cache_clear()
    native._resolve_level.cache_clear()


def _fake_compiler(tmp_path, banner: str, version: str, compiles: bool) -> str:
    """A script answering ``--version`` and ``-dumpversion`` like a compiler, and failing (or running g++) on a
    build."""
    script = tmp_path / "fake-c++"
    build = 'exec g++ "$@"' if compiles else 'echo "fake-c++: error: no such thing" >&2; exit 1'
    script.write_text(f'#!/bin/sh\ncase "$1" in\n  --version) echo "{banner}";;\n  -dumpversion) echo "{version}";;'
                      f'\n  *) {build};;\nesac\n')
    script.chmod(0o755)
    return str(script)


# ---- ISA levels ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("machine", "capability", "cpuid", "flags", "levels"), [
    ("x86_64", "AVX512", True, "", ("avx512", "avx2", "generic")),
    ("x86_64", "AVX2", False, "flags : fpu avx2 fma", ("avx2", "generic")),
    ("AMD64", "DEFAULT", False, "", ("generic",)),
    ("x86_64", "DEFAULT", False, "flags : avx512f avx512dq avx512bw avx512vl avx2 fma", ("avx512", "avx2", "generic")),
    ("arm64", "DEFAULT", False, "", ("neon", "generic")),
    ("aarch64", "SVE256", False, "", ("neon", "generic")),
    ("riscv64", "DEFAULT", False, "", ("generic",)),
])
def test_cpu_levels_from_torch_cpuid_and_machine(monkeypatch, machine, capability, cpuid, flags, levels):
    monkeypatch.setattr(native, "_machine", lambda: machine.lower())
    monkeypatch.setattr(native, "_torch_capability", lambda: capability)
    monkeypatch.setattr(native, "_cpuid_supports", lambda level: cpuid)
    monkeypatch.setattr(native, "_cpu_flags", lambda: flags)
    assert native.cpu_levels() == levels


def test_this_cpu_default_level_and_vector_bytes(fresh):
    assert native.isa_level() in native.cpu_levels()
    assert native.isa_level() == native._default_level()
    assert native.vector_bytes() == native.VECTOR_BYTES[native.isa_level()]
    assert [native.vector_bytes(level) for level in native.ISA_LEVELS] == [64, 32, 16, 16]


def test_torch_capability_caps_the_default(fresh, monkeypatch):
    monkeypatch.setattr(native, "cpu_levels", lambda: ("avx512", "avx2", "generic"))
    monkeypatch.setattr(native, "_torch_capability", lambda: "AVX2")
    assert native.isa_level() == "avx2"
    monkeypatch.setenv("VISATTN_ISA", "avx512")  # forcing a level the CPU runs is allowed
    assert native.isa_level() == "avx512"


@pytest.mark.parametrize("level", ["generic", "AVX2 "])
def test_visattn_isa_forces_a_level(fresh, monkeypatch, level):
    monkeypatch.setenv("VISATTN_ISA", level)
    expected = level.strip().lower()
    if expected not in native.cpu_levels():
        pytest.skip(f"this CPU does not run {expected}")
    assert native.isa_level() == expected
    assert f"-{expected}-" in native.library_path("local_attention").name


@pytest.mark.parametrize(("value", "message"), [("avx512", "cannot run"), ("neon", "cannot run"),
                                                 ("sse9", "is not one of")])
def test_a_level_the_cpu_cannot_run_is_refused_with_a_warning(fresh, monkeypatch, caplog, value, message):
    monkeypatch.setattr(native, "cpu_levels", lambda: ("avx2", "generic"))
    monkeypatch.setattr(native, "_torch_capability", lambda: "AVX2")
    monkeypatch.setenv("VISATTN_ISA", value)
    with caplog.at_level(logging.WARNING, logger="visattn"):
        assert native.isa_level() == "avx2"
    assert message in caplog.text and value in caplog.text


def test_level_flags_set_the_vector_width_without_march_native():
    for level in native.ISA_LEVELS:
        flags = native.level_flags(level)
        assert f"-DVISATTN_VECTOR_BYTES={native.VECTOR_BYTES[level]}" in flags
        assert "-march=native" not in flags and "-fopenmp" in flags
        assert "-fopenmp" not in native.level_flags(level, openmp=False)
    assert {"-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma"} <= set(native.level_flags("avx512"))
    assert {"-mavx2", "-mfma"} <= set(native.level_flags("avx2"))
    assert not any(f.startswith(("-mavx", "-march")) for f in native.level_flags("generic"))


# ---- building and the cache ---------------------------------------------------------------------------------------


@needs_compiler
def test_builds_once_into_a_private_cache_dir_named_by_level(fresh, monkeypatch):
    monkeypatch.setenv("VISATTN_ISA", "generic")  # the quickest build
    lib = native.native_library("tile_attention_backward")
    assert lib is not None and hasattr(lib, "visattn_tile_backward_f32")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    built = list(fresh.glob("tile_attention_backward-*.so"))
    assert [p.name for p in built] == [native.library_path("tile_attention_backward").name]
    assert re.fullmatch(r"tile_attention_backward-generic-[0-9a-f]{16}\.so", built[0].name)
    record, reason = native.verify(built[0])
    assert record is not None, reason
    assert record["compiler"] == native.available_compiler() and record["level"] == "generic"
    stamp = built[0].stat().st_mtime_ns
    native.native_library.cache_clear()
    assert native.native_library("tile_attention_backward") is not None
    assert built[0].stat().st_mtime_ns == stamp


def test_disabled_by_environment(fresh, monkeypatch):
    monkeypatch.setenv("VISATTN_NATIVE", "0")
    monkeypatch.setenv("VISATTN_REQUIRE_NATIVE", "1")  # an explicit off still wins
    assert native.native_library("local_attention") is None


def test_no_compiler_falls_back_with_a_warning_or_raises_when_required(fresh, monkeypatch, caplog):
    monkeypatch.setattr(native, "_compiler", lambda: None)
    with caplog.at_level(logging.WARNING, logger="visattn"):
        assert native.native_library("tile_attention") is None
    assert "no usable C++ compiler" in caplog.text
    assert not list(fresh.glob("*.so")) if fresh.exists() else True
    native.native_library.cache_clear()
    monkeypatch.setenv("VISATTN_REQUIRE_NATIVE", "1")
    with pytest.raises(RuntimeError, match="VISATTN_REQUIRE_NATIVE"):
        native.native_library("tile_attention")


@needs_compiler
def test_failing_build_falls_back_with_the_compiler_message_or_raises(fresh, monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("CXX", _fake_compiler(tmp_path, "g++ (fake) 13.1.0", "13", compiles=False))
    native._compiler_identity.cache_clear()
    with caplog.at_level(logging.WARNING, logger="visattn"):
        assert native.native_library("local_attention") is None
    assert "building the local_attention kernel" in caplog.text and "no such thing" in caplog.text
    assert not list(fresh.glob("*.so"))
    native.native_library.cache_clear()
    monkeypatch.setenv("VISATTN_REQUIRE_NATIVE", "1")
    with pytest.raises(RuntimeError, match="building the local_attention kernel"):
        native.native_library("local_attention")


@pytest.mark.parametrize(("banner", "version", "usable"), [
    ("g++ (GCC) 8.3.0", "8", False), ("g++ (GCC) 9.4.0", "9.4.0", True),
    ("Apple clang version 15.0.0", "15.0.0", True), ("Microsoft (R) C/C++ Optimizing Compiler", "19", False),
])
def test_compiler_versions(tmp_path, caplog, banner, version, usable):
    compiler = _fake_compiler(tmp_path, banner, version, compiles=False)
    native._compiler_identity.cache_clear()
    with caplog.at_level(logging.WARNING, logger="visattn"):
        identity = native._compiler_identity(compiler)
    native._compiler_identity.cache_clear()
    assert (identity is not None) == usable
    if usable:
        assert banner in identity
    else:
        assert "GCC >= 9" in caplog.text or "g++ >= 9" in caplog.text


# ---- typed signatures ---------------------------------------------------------------------------------------------

_C_KINDS = {"const T*": ("float", "float?"), "T*": ("float", "float?"), "int64_t": ("int",),
            "const int64_t*": ("int64s", "strides"), "const uint8_t*": ("bytes",), "double": ("scale",)}


def _c_parameters() -> dict[str, list[tuple[str, str]]]:
    """The exported functions' parameters, (type, name) in order, read from the C sources' entry macros."""
    found = {}
    for source in native.SOURCE_DIR.glob("*.cpp"):
        text = source.read_text().replace("\\\n", " ")
        for base, params in re.findall(r'extern "C" void (visattn_\w+?)_##SUFFIX\(([^)]*)\)', text):
            parts = [p.strip().rsplit(" ", 1) for p in params.split(",")]
            for suffix in native.DTYPE_SUFFIX.values():
                found[f"{base}_{suffix}"] = (source.stem, [(t.strip(), n.strip()) for t, n in parts])
    return found


def test_the_signature_table_matches_the_c_sources():
    c_functions = _c_parameters()
    assert set(c_functions) == set(native.SIGNATURES)
    for function, (library, params) in c_functions.items():
        signature = native.SIGNATURES[function]
        assert signature.library == library, function
        assert params[-1] == ("int", "threads"), function
        assert [name for name, _ in signature.params] == [name for _, name in params[:-1]], function
        for (c_type, name), (_, kind) in zip(params[:-1], signature.params, strict=True):
            assert kind in _C_KINDS[c_type], (function, name, c_type, kind)
            assert (kind == "strides") == (c_type == "const int64_t*" and name.endswith("s") and len(name) <= 3), \
                (function, name)


@needs_compiler
def test_loaded_functions_carry_their_argtypes():
    for library in {s.library for s in native.SIGNATURES.values()}:
        lib = native.native_library(library)
        for function, signature in native.SIGNATURES.items():
            if signature.library == library:
                assert getattr(lib, function).argtypes == signature.argtypes
                assert getattr(lib, function).restype is None
    fn = native.native_library("local_attention").visattn_index_forward_f32
    with pytest.raises(ctypes.ArgumentError):  # ctypes itself refuses a str in an int64 slot
        fn(*([None] * 5), "rows", *([0] * 9), 1.0, 1)


def _index_args(scale=0.5, dtype=torch.float32, index_dtype=torch.int64, device="cpu"):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 8, generator=g, dtype=dtype) for _ in range(3))
    out = torch.zeros(1, 2, 6, 8, dtype=dtype)
    index = torch.randint(0, 6, (1, 2, 6, 3), generator=g).to(index_dtype)
    q = q.to(device)
    return [q, k, v, out, index, 6, 3, 1, 2, 8, 8, native.strides(q), native.strides(k), native.strides(v), scale]


_INDEX_F32 = ("local_attention", "visattn_index_forward_f32")


@pytest.mark.parametrize("scale", [torch.tensor(0.25), np.float64(0.25), np.float32(0.25), float("nan"),
                                   math.inf, -math.inf, True, "0.25", None])
def test_call_refuses_a_scale_that_is_not_a_finite_python_float(scale):
    args = _index_args(scale)
    with pytest.raises(ValueError, match="scale"):
        native.call(*_INDEX_F32, *args)


@needs_compiler
def test_call_converts_an_int_scale_to_float():
    by_int, by_float = _index_args(1), _index_args(1.0)
    native.call(*_INDEX_F32, *by_int)
    native.call(*_INDEX_F32, *by_float)
    assert torch.equal(by_int[3], by_float[3]) and by_int[3].abs().sum() > 0


@pytest.mark.parametrize(("change", "name"), [
    (lambda a: a.__setitem__(0, a[0].double()), "q"),
    (lambda a: a.__setitem__(3, None), "out"),
    (lambda a: a.__setitem__(4, a[4].int()), "index"),
    (lambda a: a.__setitem__(4, a[4].float()), "index"),
    (lambda a: a.__setitem__(0, a[0].to("meta")), "q"),
    (lambda a: a.__setitem__(5, torch.tensor(6)), "rows"),
    (lambda a: a.__setitem__(5, 6.0), "rows"),
    (lambda a: a.__setitem__(11, (1, 2)), "qs"),
    (lambda a: a.__setitem__(11, a[0]), "qs"),
])
def test_call_names_a_bad_argument(change, name):
    args = _index_args()
    change(args)
    with pytest.raises(native.NativeArgumentError, match=rf"\b{name} must be"):
        native.call(*_INDEX_F32, *args)


def test_call_checks_function_argument_count_and_threads():
    with pytest.raises(ValueError, match="not a function"):
        native.call("tile_attention", "visattn_index_forward_f32", *_index_args())
    with pytest.raises(ValueError, match="takes 15 arguments"):
        native.call(*_INDEX_F32, *_index_args()[:-1])
    for threads in (0, 2.0, torch.tensor(2), True):
        with pytest.raises(ValueError, match="threads"):
            native.call(*_INDEX_F32, *_index_args(), threads=threads)
