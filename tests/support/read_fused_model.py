#!/usr/bin/env python3
"""Opens a chorus fused-model file with PyTorch's torch.jit.load and prints
its format, algorithm, spec and tensors: the file is readable outside chorus.

    python3 read_fused_model.py FILE
"""
import sys

import torch

m = torch.jit.load(sys.argv[1])
tensors = dict(m.tensors.named_buffers())
print(f"format {m.format}")
print(f"algorithm {m.algorithm}")
print(f"spec {m.spec}")
print(f"tensors {len(tensors)}")
for name, t in sorted(tensors.items())[:3]:
    print(f"  {name} {list(t.shape)}")
if not tensors or not all(torch.isfinite(t).all() for t in tensors.values()
                          if t.is_floating_point()):
    sys.exit("no tensors, or non-finite ones")
