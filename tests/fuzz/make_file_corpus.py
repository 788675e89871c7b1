#!/usr/bin/env python3
"""Writes the seed corpora of the file-reader fuzz targets (tests/fuzz/):
idx (MNIST's format, raw and gzip), image (PNG of every colour type and bit
depth libspng decodes, interlaced; JPEG grey, 4:2:0 and progressive) and
archive (zip archives as torch.save and TorchScript write them, stored and
deflated). The first byte of an idx or image seed is the target's selector
(idx: odd = images, even = labels; image: odd = RGB, even = grey).

    /usr/bin/python3 tests/fuzz/make_file_corpus.py [tests/fuzz/corpus]
"""
import gzip
import io
import os
import struct
import sys
import zipfile
import zlib

# Made once with libjpeg-turbo's tjCompress2 (quality 50): 8x8 grey, 16x8 RGB
# 4:2:0, and 16x8 RGB 4:4:4 progressive.
JPEGS = {
    'grey8x8': bytes.fromhex(
        'ffd8ffe000104a46494600010100000100010000ffdb004300100b0c0e0c0a100e0d0e12'
        '11101318281a181616183123251d283a333d3c3933383740485c4e404457453738506d51'
        '575f626768673e4d71797064785c656763ffc0000b080008000801011100ffc4001f0000'
        '010501010101010100000000000000000102030405060708090a0bffc400b51000020103'
        '03020403050504040000017d01020300041105122131410613516107227114328191a108'
        '2342b1c11552d1f02433627282090a161718191a25262728292a3435363738393a434445'
        '464748494a535455565758595a636465666768696a737475767778797a83848586878889'
        '8a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9'
        'cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffda00080101'
        '00003f00aeb6960b1a9b4d26e657cf225db18c7d46ef6ed5ffd9'
    ),
    'rgb16x8_420': bytes.fromhex(
        'ffd8ffe000104a46494600010100000100010000ffdb004300100b0c0e0c0a100e0d0e12'
        '11101318281a181616183123251d283a333d3c3933383740485c4e404457453738506d51'
        '575f626768673e4d71797064785c656763ffdb0043011112121815182f1a1a2f63423842'
        '636363636363636363636363636363636363636363636363636363636363636363636363'
        '6363636363636363636363636363ffc00011080008001003012200021101031101ffc400'
        '1f0000010501010101010100000000000000000102030405060708090a0bffc400b51000'
        '02010303020403050504040000017d010203000411051221314106135161072271143281'
        '91a1082342b1c11552d1f02433627282090a161718191a25262728292a3435363738393a'
        '434445464748494a535455565758595a636465666768696a737475767778797a83848586'
        '8788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6'
        'c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffc400'
        '1f0100030101010101010101010000000000000102030405060708090a0bffc400b51100'
        '020102040403040705040400010277000102031104052131061241510761711322328108'
        '144291a1b1c109233352f0156272d10a162434e125f11718191a262728292a3536373839'
        '3a434445464748494a535455565758595a636465666768696a737475767778797a828384'
        '85868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4'
        'c5c6c7c8c9cad2d3d4d5d6d7d8d9dae2e3e4e5e6e7e8e9eaf2f3f4f5f6f7f8f9faffda00'
        '0c03010002110311003f006c41213b2d522056418169079adb7b02cdf21ed923bd2dce0b'
        'b0b811ef8a4ddb6ee632300de912f2a4e41e3200f6a28a23aab8ae7fffd9'
    ),
    'rgb16x8_444_progressive': bytes.fromhex(
        'ffd8ffe000104a46494600010100000100010000ffdb004300100b0c0e0c0a100e0d0e12'
        '11101318281a181616183123251d283a333d3c3933383740485c4e404457453738506d51'
        '575f626768673e4d71797064785c656763ffdb0043011112121815182f1a1a2f63423842'
        '636363636363636363636363636363636363636363636363636363636363636363636363'
        '6363636363636363636363636363ffc20011080008001003011100021101031101ffc400'
        '1500010100000000000000000000000000000001ffc40015010101000000000000000000'
        '00000000000001ffda000c03010002100310000001885fffc40017100100030000000000'
        '000000000000000000010221ffda00080101000105028c59ffc400141101000000000000'
        '00000000000000000010ffda0008010301013f013fffc400151101010000000000000000'
        '0000000000000001ffda0008010201013f0147ffc4001b10000104030000000000000000'
        '0000000011000122422131a1ffda0008010100063f0288dd58a90c3d9cf17fffc4001b10'
        '000203000300000000000000000000001121000131516171ffda0008010100013f2105aa'
        '72c3db5357a101cfa64fffda000c030100020003000000103bffc4001811010100030000'
        '000000000000000000000100213141ffda0008010301013f100dcbc1c5ffc40016110101'
        '0100000000000000000000000000011100ffda0008010201013f101ad3084dffc4001b10'
        '010002030101000000000000000000000111210041613151ffda0008010100013f102d16'
        '841ce0d9d4a6f2290f5880f8b9323520733fffd9'
    ),
}


def write(directory, name, data):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def idx(magic, dims, payload):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload


def idx_seeds(out):
    images = idx(0x803, [3, 2, 2], bytes(range(12)))
    labels = idx(0x801, [4], bytes([0, 9, 4, 1]))
    write(out, "images-raw", b"\x01" + images)
    write(out, "images-gz", b"\x01" + gzip.compress(images, mtime=0))
    write(out, "labels-raw", b"\x00" + labels)
    write(out, "labels-gz", b"\x00" + gzip.compress(labels, mtime=0))
    write(out, "images-28x28", b"\x01" + gzip.compress(idx(0x803, [1, 28, 28], bytes(784)), mtime=0))
    write(out, "images-bad-magic", b"\x01" + labels)
    write(out, "labels-trailing", b"\x00" + labels + b"x")


def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png(width, height, depth, colour, rows, interlace=0, palette=None, extra=b""):
    """rows: the raw scanlines, each without its filter byte."""
    raw = b"".join(b"\x00" + r for r in rows)
    out = b"\x89PNG\r\n\x1a\n"
    out += chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace))
    if palette is not None:
        out += chunk(b"PLTE", palette)
    out += extra
    out += chunk(b"IDAT", zlib.compress(raw))
    out += chunk(b"IEND", b"")
    return out


def image_seeds(out):
    w, h = 4, 3
    grey8 = [bytes((x * 60 + y * 20) % 256 for x in range(w)) for y in range(h)]
    rgb8 = [bytes((x * 40 + y * 10 + c * 80) % 256 for x in range(w) for c in range(3)) for y in range(h)]
    rgba8 = [bytes((x * 40 + c * 50) % 256 for x in range(w) for c in range(4)) for y in range(h)]
    grey16 = [b"".join(struct.pack(">H", (x * 9000 + y * 300) % 65536) for x in range(w)) for y in range(h)]
    grey1 = [bytes([0b10100000 >> y]) for y in range(h)]
    pal = [bytes([(x + y) % 3 for x in range(w)]) for y in range(h)]
    write(out, "grey8.png", b"\x00" + png(w, h, 8, 0, grey8))
    write(out, "grey8-as-rgb.png", b"\x01" + png(w, h, 8, 0, grey8))
    write(out, "rgb8.png", b"\x01" + png(w, h, 8, 2, rgb8))
    write(out, "rgb8-as-grey.png", b"\x00" + png(w, h, 8, 2, rgb8))
    write(out, "rgba8.png", b"\x01" + png(w, h, 8, 6, rgba8))
    write(out, "grey16.png", b"\x00" + png(w, h, 16, 0, grey16))
    write(out, "grey1.png", b"\x00" + png(w, h, 1, 0, grey1))
    write(out, "palette.png", b"\x01" + png(w, h, 8, 3, pal, palette=bytes([255, 0, 0, 0, 255, 0, 0, 0, 255]),
                                            extra=chunk(b"tRNS", bytes([255, 128, 0]))))
    # Adam7: with width and height 1 only the first pass holds a pixel.
    write(out, "interlaced.png", b"\x00" + png(1, 1, 8, 0, [b"\x80"], interlace=1))
    for name, data in JPEGS.items():
        write(out, name + ".jpg", (b"\x01" if "rgb" in name else b"\x00") + data)


def archive_seeds(out):
    def zipped(entries, method):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=method) as z:
            for name, data in entries:
                z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data,
                           compress_type=method)
        return buf.getvalue()

    # The layout of torch.save: <name>/data.pkl, <name>/data/0, <name>/version.
    entries = [("archive/data.pkl", b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nq\x00."),
               ("archive/data/0", struct.pack("<4f", 0.0, 1.0, 2.0, 3.0)),
               ("archive/version", b"3\n")]
    write(out, "torch-save-stored.pt", zipped(entries, zipfile.ZIP_STORED))
    write(out, "torch-save-deflated.pt", zipped(entries, zipfile.ZIP_DEFLATED))
    write(out, "empty.zip", zipped([], zipfile.ZIP_STORED))
    try:
        import torch  # Debian's python3-torch: a real file as torch writes it.
        buf = io.BytesIO()
        torch.save(torch.arange(6, dtype=torch.float32).reshape(2, 3), buf)
        write(out, "torch-save-real.pt", buf.getvalue())
    except ImportError:
        pass


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus")
    idx_seeds(os.path.join(root, "idx"))
    image_seeds(os.path.join(root, "image"))
    archive_seeds(os.path.join(root, "archive"))


if __name__ == "__main__":
    main()
