"""``visattn codec encode IN.png OUT.bin --checkpoint CKPT`` and ``visattn codec decode IN.bin OUT.png --checkpoint
CKPT``: code a picture with an S2LIC checkpoint (arXiv 2403.14471; written by ``python -m
visattn.tasks.compression``). Pictures of any size are padded (edge replication) to multiples of 64 and cropped
back after decoding; the bitstream records the size and the checkpoint's fingerprint, so that decoding with other
weights is refused. Torch, CompressAI and Pillow are imported when the command runs, not with ``visattn --help``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .cli_paths import check_output_file

if TYPE_CHECKING:
    from rich.console import Console

DESCRIPTION = "Compress a picture to an S2LIC bitstream, or decompress one, with a trained S2LIC checkpoint."


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``codec`` subcommand (``encode`` and ``decode``) to the ``visattn`` parser."""
    codec = commands.add_parser("codec", help="S2LIC learned image codec: encode a picture, decode a bitstream",
                                description=DESCRIPTION)
    actions = codec.add_subparsers(dest="codec_action", required=True)
    encode = actions.add_parser("encode", help="picture (PNG, JPEG, ...) -> S2LIC bitstream")
    encode.add_argument("input", type=Path, help="the picture to compress")
    encode.add_argument("output", type=Path, help="the bitstream file to write")
    decode = actions.add_parser("decode", help="S2LIC bitstream -> PNG picture")
    decode.add_argument("input", type=Path, help="a bitstream written by `visattn codec encode`")
    decode.add_argument("output", type=Path, help="the picture to write (PNG)")
    for action in (encode, decode):
        action.add_argument("--checkpoint", type=Path, required=True,
                            help="S2LIC checkpoint (python -m visattn.tasks.compression --out FILE)")


def _check_input(path: Path, what: str) -> None:
    if not path.exists():
        raise ValueError(f"{what} {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} is not a file")


def execute(args: argparse.Namespace, out: Console) -> int:
    """Run ``visattn codec encode|decode``; bad paths and files raise ``ValueError`` (one line on stderr)."""
    _check_input(args.input, "input")
    _check_input(args.checkpoint, "--checkpoint")
    check_output_file(args.output, "output", "out.bin" if args.codec_action == "encode" else "out.png")
    if args.codec_action == "encode":
        return _encode(args, out)
    return _decode(args, out)


def _encode(args: argparse.Namespace, out: Console) -> int:
    import numpy as np
    from PIL import Image

    from .models.s2lic import pad_to_multiple
    from .tasks.compression import load_checkpoint, model_fingerprint, pack_stream, to_tensor

    with Image.open(args.input) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    h, w = pixels.shape[:2]
    if h > 65535 or w > 65535:
        raise ValueError(f"input {str(args.input)!r} is {w} x {h}; sides up to 65535 pixels are supported")
    model = load_checkpoint(args.checkpoint)
    start = time.perf_counter()
    coded = model.compress(pad_to_multiple(to_tensor(pixels)[None]))
    data = pack_stream(coded["strings"], coded["shape"], (h, w), model_fingerprint(model))
    args.output.write_bytes(data)
    out.print(f"{args.input} ({w} x {h}) -> {args.output}: {len(data)} bytes, {8 * len(data) / (h * w):.4f} bpp "
              f"in {time.perf_counter() - start:.2f} s", highlight=False)
    return 0


def _decode(args: argparse.Namespace, out: Console) -> int:
    from PIL import Image

    from .tasks.compression import load_checkpoint, model_fingerprint, to_uint8, unpack_stream

    strings, shape, (h, w), fingerprint = unpack_stream(args.input.read_bytes())
    model = load_checkpoint(args.checkpoint)
    if fingerprint != model_fingerprint(model):
        raise ValueError(f"input {str(args.input)!r} was written with another checkpoint than "
                         f"{str(args.checkpoint)!r} (model fingerprints differ); decode it with the encoder's")
    start = time.perf_counter()
    x_hat = model.decompress(strings, shape)["x_hat"][0, :, :h, :w]
    Image.fromarray(to_uint8(x_hat)).save(args.output, format="PNG")
    out.print(f"{args.input} -> {args.output} ({w} x {h}) in {time.perf_counter() - start:.2f} s", highlight=False)
    return 0
