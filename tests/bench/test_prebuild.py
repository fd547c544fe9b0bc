"""Native kernels built before timing: every source in the kernel folder, tolerant of a machine without them."""

from visattn.bench import prebuild
from visattn.ops import native


def test_every_kernel_source_is_named():
    names = prebuild.native_library_names()
    assert names == tuple(sorted(p.stem for p in native.SOURCE_DIR.glob("*.cpp")))
    assert set(prebuild.NATIVE_LIBRARIES) <= set(names)


def test_builds_each_library_and_tolerates_none(monkeypatch):
    asked = []

    def fake_library(name):
        asked.append(name)
        return None if name == "tile_attention" else object()

    monkeypatch.setattr(native, "native_library", fake_library)
    built = prebuild.prebuild_native_kernels()
    assert asked == list(prebuild.native_library_names())
    assert built == {name: name != "tile_attention" for name in asked}


def test_source_folder_unknown_falls_back_to_the_list(monkeypatch):
    monkeypatch.delattr(native, "SOURCE_DIR")
    assert prebuild.native_library_names() == prebuild.NATIVE_LIBRARIES
