"""Masks travel to the kernels' custom operators by key (``Mask.key``): keys survive pickling into another process."""

from __future__ import annotations

import pickle
import subprocess
import sys

from visattn import masks
from visattn.masks import Mask


def test_equal_masks_share_a_key_and_unequal_ones_do_not():
    assert masks.neighborhood_mask(5).key == masks.neighborhood_mask(5).key
    assert masks.neighborhood_mask(5).key != masks.neighborhood_mask(7).key
    assert Mask.from_key(masks.window_mask(4).key) == masks.window_mask(4)


def test_an_unpickled_mask_reaches_the_kernels_in_a_fresh_process():
    blob = pickle.dumps(masks.neighborhood_mask(5, dilation=2))
    code = (f"import pickle, torch\nfrom visattn.ops import masked_attention\nm = pickle.loads({blob!r})\n"
            "q = torch.randn(1, 1, 100, 8, dtype=torch.float64)\n"
            "out = masked_attention(q, q, q, m, (10, 10), backend='fused_tiles')\n"
            "ref = masked_attention(q, q, q, m, (10, 10), backend='reference')\n"
            "print(float((out - ref).abs().max()))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.strip().splitlines()[-1]) < 1e-10
