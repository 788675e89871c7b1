#!/usr/bin/python3
"""The same-recipe PyTorch peer of bench_p1 (protocol P1, seed-for-seed).

bench_p1 --vs-pytorch writes the split it uses (expert shards, tasks,
transfer pool U, labelled fusion set V) to a JSON file and runs this script
on it, alternating with its own run. Both train and evaluate the identical
recipe, phase by phase:

  experts    a LeNet (16/32 channels, BatchNorm, dropout 0.25, fc 128) per
             shard on its task: Adam, lr 2e-3 with per-step cosine decay,
             batch 64, --expert-epochs epochs
  inference  every expert's softmax on U and on the 10,000 test images
             (batches of 1024, eval mode, no gradients)
  foe        the FoE fuser: an MLP (512, 512, dropout 0.1) on the experts'
             log-probabilities of V, AdamW lr 1e-3 wd 1e-4, 50 epochs,
             batch 128, cosine
  student    foe-distill's student: a LeNet on U against the fuser's answers
             (10 % held out, patience 4 or --patience, best epoch kept)
             plus V's labels,
             Adam lr 1e-3, 10 epochs (--student-epochs), batch 128, cosine

It prints one JSON object: seconds and accuracy per phase.

  /usr/bin/python3 bench/p1/peer.py --split SPLIT.json [--data-dir DIR]
      [--threads N] [--seed N] [--expert-epochs N] [--out FILE]
"""
import argparse
import gzip
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def locate(directory, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    sys.exit(f"peer.py: no {stem}(.gz) in {directory}")


def load(directory, prefix):
    images = read_idx(locate(directory, prefix + "-images-idx3-ubyte"))
    labels = read_idx(locate(directory, prefix + "-labels-idx1-ubyte"))
    x = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


class LeNet(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.dropout(F.relu(self.fc1(x.flatten(1))), 0.25, self.training)
        return self.fc2(x)


class Mlp(nn.Module):
    def __init__(self, inputs, hidden, classes, dropout=0.1):
        super().__init__()
        widths = [inputs] + hidden
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths, widths[1:] + [classes]))
        self.dropout = dropout

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i + 1 < len(self.layers):
                x = F.dropout(F.relu(x), self.dropout, self.training)
        return x


def predict_proba(model, x, batch=1024):
    model.eval()
    with torch.no_grad():
        return torch.cat([torch.softmax(model(x[i:i + batch]), 1)
                          for i in range(0, len(x), batch)])


def accuracy(probs, labels):
    truth = labels.argmax(1) if labels.dim() == 2 else labels
    return (probs.argmax(1) == truth).double().mean().item()


def loss_fn(logits, y):
    if y.dtype == torch.int64:
        return F.cross_entropy(logits, y)
    return -(y * torch.log_softmax(logits, 1)).sum(1).mean()


def train(model, x, y, epochs, batch, lr, seed, adamw=False, weight_decay=0.0,
          val_x=None, val_y=None, patience=0):
    """fusion::train's loop: per-step cosine, shuffled batches, best epoch."""
    gen = torch.Generator().manual_seed(seed)
    opt = (torch.optim.AdamW if adamw else torch.optim.Adam)(
        model.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(x)
    steps = (n + batch - 1) // batch
    total = steps * epochs
    step = 0
    best, best_acc, since = None, None, 0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        loss_sum = 0.0
        for b in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            idx = order[b * batch:(b + 1) * batch]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            step += 1
        if val_x is not None:
            acc = accuracy(predict_proba(model, val_x), val_y)
            if best_acc is None or acc > best_acc:
                best_acc, since = acc, 0
                best = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                since += 1
            if patience > 0 and since >= patience:
                break
    if best is not None:
        model.load_state_dict(best)
    model.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", required=True)
    ap.add_argument("--data-dir", default=os.environ.get(
        "CHORUS_DATA_DIR", "/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--expert-epochs", type=int, default=3)
    ap.add_argument("--student-epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=4,
                    help="the student's early stopping; 0 runs every epoch")
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    with open(a.split) as f:
        split = json.load(f)
    train_x, train_y = load(a.data_dir, "train")
    test_x, test_y = load(a.data_dir, "t10k")
    result = {"peer": "pytorch", "torch": torch.__version__,
              "threads": a.threads, "seed": a.seed}

    # Experts.
    t = time.perf_counter()
    experts, tasks = [], split["tasks"]
    for i, (task, rows) in enumerate(zip(tasks, split["expert_train"])):
        rows = torch.tensor(rows, dtype=torch.int64)
        local = torch.full((10,), -1, dtype=torch.int64)
        local[torch.tensor(task)] = torch.arange(len(task))
        torch.manual_seed(a.seed * 100 + i)
        model = LeNet(len(task))
        train(model, train_x[rows], local[train_y[rows]], a.expert_epochs, 64,
              2e-3, a.seed * 100 + i)
        experts.append((model, task, local))
    result["experts_seconds"] = time.perf_counter() - t

    # Inference: every expert on U and on the test set.
    u = train_x[torch.tensor(split["transfer"], dtype=torch.int64)]
    t = time.perf_counter()
    answers_u = [predict_proba(m, u) for m, _, _ in experts]
    answers_test = [predict_proba(m, test_x) for m, _, _ in experts]
    result["inference_seconds"] = time.perf_counter() - t
    own = []
    for (m, task, local), ans in zip(experts, answers_test):
        known = local[test_y] >= 0
        own.append(accuracy(ans[known], local[test_y][known]))
    result["experts_accuracy"] = sum(own) / len(own)

    # FoE: the fuser on V's log-probabilities.
    # V: U's first rows, with their labels (split["fusion"] holds their
    # indices in the training set).
    v_labels = train_y[torch.tensor(split["fusion"], dtype=torch.int64)]
    v = torch.arange(len(v_labels))
    features = lambda answers: torch.log(torch.cat(answers, 1) + 1e-6)
    t = time.perf_counter()
    torch.manual_seed(a.seed)
    fuser = Mlp(features(answers_u).shape[1], [512, 512], 10)
    train(fuser, features(answers_u)[v], v_labels, 50, 128, 1e-3, a.seed,
          adamw=True, weight_decay=1e-4)
    teacher = predict_proba(fuser, features(answers_u))
    result["foe_seconds"] = time.perf_counter() - t
    result["foe_accuracy"] = accuracy(predict_proba(fuser, features(answers_test)),
                                      test_y)

    # foe-distill's student on U (10 % held out) plus V's labels.
    t = time.perf_counter()
    gen = torch.Generator().manual_seed(a.seed)
    order = torch.randperm(len(u), generator=gen)
    n_val = int(len(u) * 0.1)
    val, rest = order[:n_val], order[n_val:]
    x = torch.cat([u[rest], u[v]])
    y = torch.cat([teacher[rest], F.one_hot(v_labels, 10).float()])
    torch.manual_seed(a.seed)
    student = LeNet(10)
    train(student, x, y, a.student_epochs, 128, 1e-3, a.seed, val_x=u[val],
          val_y=teacher[val], patience=a.patience)
    result["student_seconds"] = time.perf_counter() - t
    result["student_accuracy"] = accuracy(predict_proba(student, test_x), test_y)

    text = json.dumps(result, indent=2)
    if a.out:
        with open(a.out + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(a.out + ".tmp", a.out)
    print(text)


if __name__ == "__main__":
    main()
