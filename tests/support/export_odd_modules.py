"""Writes TorchScript modules whose forward does not return one tensor, for
the node's start-up check (tests/node/node_test.cpp):

  tuple.pt  returns (logits [N, 3], features [N, 8])
  dict.pt   returns {"features": [N, 8], "logits": [N, 3]}
  wide.pt   returns logits [N, 5] (for an expert configured with 3 labels)
  rgb.pt    takes [N, 3, 32, 32] and returns logits [N, 5]

Usage: export_odd_modules.py OUT_DIR
"""
import sys
from typing import Dict, Tuple

import torch


class Tuple_(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.f = torch.nn.Linear(16, 8)
        self.h = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        z = torch.relu(self.f(x.flatten(1)))
        return self.h(z), z


class Dict_(Tuple_):
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        z = torch.relu(self.f(x.flatten(1)))
        return {"features": z, "logits": self.h(z)}


class Wide(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.h = torch.nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(x.flatten(1))


class Rgb(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv2d(3, 4, 3, stride=2)
        self.h = torch.nn.Linear(4 * 15 * 15, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(torch.relu(self.c(x)).flatten(1))


def main():
    out = sys.argv[1]
    for name, make in [("tuple", Tuple_), ("dict", Dict_), ("wide", Wide), ("rgb", Rgb)]:
        torch.manual_seed(0)  # tuple.pt and dict.pt hold the same weights.
        torch.jit.save(torch.jit.script(make().eval()), f"{out}/{name}.pt")


if __name__ == "__main__":
    main()
