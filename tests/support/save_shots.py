"""Writes few-shot files for `chorus node adapt` tests, as a Python user
would: shots.pt (5 images of each of Fashion-MNIST classes 2 and 8, the
first in the test split), shot_labels.pt (their class indices) and
unlabelled.pt (the next 100 images of each class, without labels) and
small-unlabelled.pt (3 blank images of 10×10, the wrong size).

    python3 save_shots.py FASHION_MNIST_DIR OUT_DIR
"""
import gzip
import os
import sys

import torch

src, out = sys.argv[1], sys.argv[2]
with gzip.open(os.path.join(src, "t10k-images-idx3-ubyte.gz")) as f:
    images = torch.frombuffer(bytearray(f.read()[16:]), dtype=torch.uint8).view(-1, 28, 28)
with gzip.open(os.path.join(src, "t10k-labels-idx1-ubyte.gz")) as f:
    labels = torch.frombuffer(bytearray(f.read()[8:]), dtype=torch.uint8).long()
rows = torch.cat([(labels == c).nonzero().flatten()[:5] for c in (2, 8)])
torch.save(images[rows].float() / 255.0, os.path.join(out, "shots.pt"))
torch.save(labels[rows], os.path.join(out, "shot_labels.pt"))
rest = torch.cat([(labels == c).nonzero().flatten()[5:105] for c in (2, 8)])
torch.save(images[rest].float() / 255.0, os.path.join(out, "unlabelled.pt"))
torch.save(torch.zeros(3, 10, 10), os.path.join(out, "small-unlabelled.pt"))
