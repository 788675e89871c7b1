#!/usr/bin/python3
"""Writes a small synthetic 3x32x32 colour task with 5 named classes, as a
user would bring it: an unlabelled transfer pool as .npy, a labelled fusion
set as a folder of PNG files (one sub-folder per class), a test set as .npz,
the task table (per-channel normalisation, its statistics computed from the
pool), and a TorchScript expert of that shape trained on private draws
(expert.pt, logits over the 5 classes). Each class is a colour with noise,
so a model can learn it.

Usage: write_pets.py DIR             (the coordinator's files, expert.pt)
       write_pets.py DIR --simulate  (task.toml, train.npz and test.npz for
                                      chorus simulate --dataset DIR)
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "support"))
from write_data_files import png  # noqa: E402  (a PNG writer by hand)

CLASSES = ["cat", "dog", "bird", "fish", "horse"]
COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40],
                    [40, 200, 200]], dtype=np.float64)


def draw(rng, n):
    y = rng.integers(0, len(CLASSES), size=n)
    base = COLOURS[y][:, :, None, None]
    x = base + rng.normal(0, 40, size=(n, 3, 32, 32))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), y.astype(np.int64)


def task_table():
    return ("[task]\nname = \"pets\"\n"
            f"labels = [{', '.join(chr(34) + c + chr(34) for c in CLASSES)}]\n"
            "input_shape = [3, 32, 32]\ndtype = \"uint8\"\nnormalise = \"per-channel\"\n")


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261202)
    if "--simulate" in sys.argv[2:]:
        # Statistics left out: simulate computes them from its pool U.
        (out / "task.toml").write_text(task_table())
        for split, n in [("train", 1200), ("test", 300)]:
            x, y = draw(rng, n)
            np.savez_compressed(out / f"{split}.npz", x=x, y=y)
        return
    pool, _ = draw(rng, 600)
    np.save(out / "pool.npy", pool)
    labelled, y = draw(rng, 40)
    for i, (image, label) in enumerate(zip(labelled, y)):
        folder = out / "labelled" / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        png(folder / f"{i:03d}.png", image.transpose(1, 2, 0).copy())
    test_x, test_y = draw(rng, 200)
    np.savez_compressed(out / "test.npz", x=test_x, y=test_y)
    scaled = pool.astype(np.float64) / 255.0
    mean = scaled.mean(axis=(0, 2, 3))
    std = scaled.std(axis=(0, 2, 3))
    (out / "task.toml").write_text(
        task_table() +
        f"mean = [{', '.join(f'{m:.6f}' for m in mean)}]\n"
        f"std = [{', '.join(f'{s:.6f}' for s in std)}]\n")
    train_expert(rng, mean, std, out / "expert.pt")


def train_expert(rng, mean, std, path):
    """A small CNN on private draws, seeing inputs as the node gives them:
    x / 255, then (x - mean) / std per channel."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(8 * 15 * 15, len(CLASSES)))
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(60):
        x, y = draw(rng, 64)
        x = (torch.from_numpy(x).float() / 255.0 - m) / s
        loss = torch.nn.functional.cross_entropy(net(x), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.jit.save(torch.jit.script(net.eval()), str(path))


if __name__ == "__main__":
    main()
