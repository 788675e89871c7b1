"""Writes the image tensors `chorus predict` tests read, as Python users would:
ok.pt (3 images, [N, H, W]) and nan.pt (2 images, one NaN pixel) in DIR.

    python3 save_tensors.py DIR
"""
import os
import sys

import torch

out = sys.argv[1]
torch.save(torch.rand(3, 28, 28), os.path.join(out, "ok.pt"))
x = torch.rand(2, 1, 28, 28)
x[1, 0, 3, 3] = float("nan")
torch.save(x, os.path.join(out, "nan.pt"))
