"""visattn.bench.allocator: glibc keeps freed memory once asked (checked in a fresh process, which it changes)."""

import subprocess
import sys

from visattn.bench.allocator import KEPT, SYSTEM

SCRIPT = """
import ctypes, ctypes.util, platform
from visattn.bench.allocator import allocator_state, keep_freed_memory
print(allocator_state())
print(keep_freed_memory(), keep_freed_memory())
print(allocator_state())
"""


def test_keep_freed_memory_in_a_fresh_process():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120)
    before, calls, after = result.stdout.strip().splitlines()
    assert before == SYSTEM
    if sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert calls == "True True" and after == KEPT
    else:
        assert calls == "False False" and after == SYSTEM
