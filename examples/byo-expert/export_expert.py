#!/usr/bin/env python3
"""Bring your own expert: build (and optionally train) a small PyTorch model
on four Fashion-MNIST classes and export it as TorchScript for `chorus node`.

    python3 export_expert.py --out expert.pt            # train ~1 minute
    python3 export_expert.py --out expert.pt --steps 0  # untrained (tests)

The node serves the exported module as a black box: it loads it with
torch::jit::load, feeds it float32 batches [N, 1, 28, 28] with pixels in
[0, 1], and applies softmax to the logits it returns (node.toml:
expert.output = "logits"). Only the labels and the input shape leave the
node; the architecture and the weights never do.

Needs PyTorch (Debian: python3-torch) and, to train, Fashion-MNIST
(Debian: dataset-fashion-mnist).
"""
import argparse
import gzip
import os
import struct

import torch
from torch import nn

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
           "Shirt", "Sneaker", "Bag", "Ankle boot"]


class SmallCnn(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(16 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def read_idx(path: str) -> torch.Tensor:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    dims = [struct.unpack(">I", data[4 + 4 * i:8 + 4 * i])[0]
            for i in range(magic & 0xFF)]
    offset = 4 + 4 * len(dims)
    return torch.frombuffer(bytearray(data[offset:]), dtype=torch.uint8).reshape(dims)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="expert.pt")
    parser.add_argument("--labels", default="Sandal,Sneaker,Bag,Ankle boot",
                        help="comma-separated Fashion-MNIST class names")
    parser.add_argument("--steps", type=int, default=600,
                        help="training steps (0: export untrained)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=os.environ.get(
        "CHORUS_DATA_DIR", "/usr/share/datasets/fashion-mnist"))
    args = parser.parse_args()

    labels = args.labels.split(",")
    unknown = [l for l in labels if l not in CLASSES]
    if unknown:
        parser.error(f"unknown classes {unknown}; expected some of {CLASSES}")
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    model = SmallCnn(len(labels))

    if args.steps > 0:
        x = read_idx(os.path.join(args.data_dir, "train-images-idx3-ubyte.gz"))
        y = read_idx(os.path.join(args.data_dir, "train-labels-idx1-ubyte.gz")).long()
        wanted = torch.tensor([CLASSES.index(l) for l in labels])
        keep = (y.unsqueeze(1) == wanted).any(1)
        x = x[keep].float().div(255).unsqueeze(1)
        y = (y[keep].unsqueeze(1) == wanted).float().argmax(1)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        for step in range(args.steps):
            idx = torch.randint(0, x.shape[0], (64,))
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if (step + 1) % 100 == 0:
                print(f"step {step + 1}/{args.steps} loss {loss.item():.4f}")

    model.eval()
    scripted = torch.jit.script(model)
    scripted.save(args.out)
    print(f"wrote {args.out}: TorchScript, input [N, 1, 28, 28], "
          f"{len(labels)} logits over {labels}")


if __name__ == "__main__":
    main()
