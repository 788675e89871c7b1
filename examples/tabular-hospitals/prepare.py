#!/usr/bin/python3
"""Prepares the tabular-hospitals example from scikit-learn's breast cancer
data set (Debian: python3-sklearn): 569 patients, 30 numeric features of a
cell nucleus image, diagnosis malignant or benign.

Writes into data/ (deterministic, seed 0):
  task.toml        the federation's task: labels, input shape [30], float32,
                   per-feature normalisation with its mean and std computed
                   from the public pool (every party normalises alike)
  pool.csv         the coordinator's public transfer pool U (features only)
  fusion.csv       its small labelled fusion set V (with a diagnosis column)
  test.csv         its test set
  hospital-a.csv   hospital A's private records   (chorus node train)
  hospital-b.csv   hospital B's private records   (chorus node train)
  clinic-c.csv     clinic C's private records, from which this script trains
  clinic-c.pt      clinic C's own PyTorch MLP, exported with TorchScript

Usage: ./prepare.py   (from this directory; /usr/bin/python3 has numpy,
sklearn and torch from Debian)
"""
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer

LABELS = ["malignant", "benign"]  # sklearn's target 0 and 1


def write_csv(path, names, x, y=None):
    header = ",".join(names + (["diagnosis"] if y is not None else []))
    rows = []
    for i, features in enumerate(x):
        cells = [f"{v:.6g}" for v in features]
        if y is not None:
            cells.append(LABELS[y[i]])
        rows.append(",".join(cells))
    path.write_text(header + "\n" + "\n".join(rows) + "\n")


def main():
    out = Path(__file__).resolve().parent / "data"
    out.mkdir(exist_ok=True)
    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    x, y = data.data, data.target
    order = np.random.default_rng(0).permutation(len(y))
    parts = {"test": 110, "pool": 200, "fusion": 40, "hospital-a": 80, "hospital-b": 80}
    start = 0
    split = {}
    for name, size in parts.items():
        split[name] = order[start:start + size]
        start += size
    split["clinic-c"] = order[start:]

    pool = x[split["pool"]]
    mean, std = pool.mean(axis=0), pool.std(axis=0)
    (out / "task.toml").write_text(
        "# The federation's task: what every party's data and expert must fit.\n"
        "[task]\nname = \"breast-cancer\"\n"
        f"labels = [{', '.join(chr(34) + l + chr(34) for l in LABELS)}]\n"
        "input_shape = [30]\ndtype = \"float32\"\nnormalise = \"per-feature\"\n"
        f"mean = [{', '.join(f'{v:.6g}' for v in mean)}]\n"
        f"std = [{', '.join(f'{v:.6g}' for v in std)}]\n")
    write_csv(out / "pool.csv", names, pool)
    for name in ["fusion", "test", "hospital-a", "hospital-b", "clinic-c"]:
        write_csv(out / f"{name}.csv", names, x[split[name]], y[split[name]])
    export_clinic_model(x[split["clinic-c"]], y[split["clinic-c"]], mean, std,
                        out / "clinic-c.pt")
    print(f"wrote {out}: task.toml, pool.csv ({len(split['pool'])}), fusion.csv, "
          f"test.csv, hospital-a.csv, hospital-b.csv, clinic-c.csv "
          f"({len(split['clinic-c'])}), clinic-c.pt")


def export_clinic_model(x, y, mean, std, path):
    """Clinic C's own model: an MLP trained on its records as the node gives
    them, (x - mean) / std per feature; logits over [malignant, benign]."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 2))
    xs = torch.tensor((x - mean) / std, dtype=torch.float32)
    ys = torch.tensor(y, dtype=torch.long)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(net(xs), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.jit.save(torch.jit.script(net.eval()), str(path))


if __name__ == "__main__":
    main()
