#!/usr/bin/python3
"""Writes real data files with NumPy for the readers' tests.

Usage: write_data_files.py DIR

Everything is deterministic: x[i, ...] = (i * 7 + arange) % 256, labels
i % 5, so the C++ test can check values without reading NumPy's output back.
"""
import struct
import sys
import zlib
from pathlib import Path

import numpy as np


def images(n, shape, dtype=np.uint8):
    size = int(np.prod(shape))
    x = np.stack([(i * 7 + np.arange(size)) % 256 for i in range(n)])
    return x.reshape((n,) + tuple(shape)).astype(dtype)


def png(path, pixels):
    """A PNG written by hand (zlib + CRCs): 8-bit grey (H, W) or RGB (H, W, 3)."""
    h, w = pixels.shape[:2]
    colour = 2 if pixels.ndim == 3 else 0
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
                     chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    x = images(6, (3, 32, 32))
    y = np.arange(6, dtype=np.int64) % 5
    np.save(out / "colour.npy", x)
    np.save(out / "colour-labels.npy", y)
    np.savez_compressed(out / "colour.npz", x=x, y=y)
    np.savez(out / "colour-plain.npz", x=x, y=y)
    np.savez(out / "no-x.npz", inputs_wrong=x)
    # Fortran order, float64: the reader must transpose it back.
    f = np.asfortranarray(images(4, (5,), np.float64) / 10.0)
    np.save(out / "fortran.npy", f)
    # Grey images, [N, H, W]: read as [N, 1, H, W] for a 1×H×W task.
    np.save(out / "grey.npy", images(3, (28, 28)))
    bad = images(4, (5,), np.float32)
    bad[2, 3] = np.nan
    np.save(out / "nan.npy", bad)
    np.save(out / "labels-out-of-range.npy", np.array([0, 1, 7, 2, 3, 4]))
    np.save(out / "big-endian.npy", np.arange(6, dtype=">i4"))
    np.save(out / "strings.npy", np.array(["a", "b"]))
    # Image folders: two classes of 3×32×32 (PNG), grey 1×8×8 as well.
    for i, name in enumerate(["cat", "dog"]):
        d = out / "folder" / name
        d.mkdir(parents=True, exist_ok=True)
        for k in range(2):
            rgb = images(1, (32, 32, 3))[0]
            rgb[0, 0] = [i, k, 9]
            png(d / f"{k}.png", rgb)
    grey = out / "grey-folder" / "cat"
    grey.mkdir(parents=True, exist_ok=True)
    png(grey / "a.png", images(1, (8, 8))[0])
    odd = out / "odd-folder" / "zebra"
    odd.mkdir(parents=True, exist_ok=True)
    png(odd / "a.png", images(1, (32, 32, 3))[0])
    small = out / "small-folder" / "cat"
    small.mkdir(parents=True, exist_ok=True)
    png(small / "a.png", images(1, (16, 16, 3))[0])


if __name__ == "__main__":
    main()
