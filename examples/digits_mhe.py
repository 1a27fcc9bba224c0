"""A small CNN on scikit-learn's bundled digits (8x8 images, no download), with and without MHE.

    python examples/digits_mhe.py                         # MHE power 2, half-space: ~30 s on an idle CPU core
    python examples/digits_mhe.py --method mhs --epochs 20

Trains the same network twice from the same initialization (the baseline, then with ``MHERegularizer``),
prints the test accuracy of both and the per-layer energies (s = 2 Riesz, mean over pairs, half-space for the
hidden layers) at the start and end of training, and saves a PNG with the training loss, the test accuracy
and every layer's energy over training to ``--out`` (default ``examples/out/``).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

from hsu_kernels.regularizers import METHODS, MHERegularizer


def load_digits_split(seed: int):
    """Digits as ``[N, 1, 8, 8]`` float tensors in [0, 1], split 75/25 with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    idx_tr, idx_te = train_test_split(range(len(y)), test_size=0.25, random_state=seed, stratify=data.target)
    return x[idx_tr], y[idx_tr], x[idx_te], y[idx_te]


def make_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def train(model, data, reg, epochs, lr, batch, seed, label, meter):
    """SGD with momentum; returns per-epoch (train cross-entropy, test accuracy, per-layer energies)."""
    from tqdm import tqdm

    x_tr, y_tr, x_te, y_te = data
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    hist = {"loss": [], "acc": [], "energy": [meter.layer_energies()]}
    for _ in tqdm(range(epochs), desc=label, file=sys.stdout):
        perm = torch.randperm(len(y_tr), generator=gen)
        total = 0.0
        for i in range(0, len(perm), batch):
            j = perm[i:i + batch]
            task = F.cross_entropy(model(x_tr[j]), y_tr[j])
            loss = task + reg() if reg is not None else task
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += task.item() * len(j)
        sched.step()
        hist["loss"].append(total / len(perm))
        hist["acc"].append(accuracy(model, x_te, y_te))
        hist["energy"].append(meter.layer_energies())
    return hist


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs[0][1]["energy"][0])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for label, hist in runs:
        axes[0].plot(range(1, len(hist["loss"]) + 1), hist["loss"], label=label)
        axes[1].plot(range(1, len(hist["acc"]) + 1), hist["acc"], label=label)
        style = "-" if label == runs[-1][0] else "--"
        for k, name in enumerate(names):
            axes[2].plot([e[name] for e in hist["energy"]], style, color=f"C{k}",
                         label=f"layer {name}" if label == runs[-1][0] else None)
    axes[0].set(title="training cross-entropy (task loss)", xlabel="epoch", yscale="log")
    axes[1].set(title="test accuracy", xlabel="epoch")
    axes[2].set(title=f"per-layer energy (solid: {runs[-1][0]}, dashed: {runs[0][0]})", xlabel="epoch")
    for ax in axes[:2]:
        ax.legend()
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="mhe", choices=METHODS)
    parser.add_argument("--power", default=None, help="MHE/CoMHE power (default 2)")
    parser.add_argument("--no-half-space", action="store_true", help="full-space values for the hidden layers")
    parser.add_argument("--hidden-coef", type=float, default=None, help="default: the method's preset")
    parser.add_argument("--output-coef", type=float, default=None, help="default: the method's preset")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the net is tiny)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"),
                        help="folder for the PNG (default examples/out/)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = load_digits_split(args.seed)
    torch.manual_seed(args.seed)
    init = make_cnn()
    runs = []
    for label in ("baseline", args.method):
        model = copy.deepcopy(init)
        meter = MHERegularizer(model, power="2", half_space=True)  # what we log: the same measure for both runs
        reg = None
        if label != "baseline":
            reg = MHERegularizer(model, power=args.power, half_space=False if args.no_half_space else None,
                                 hidden_coef=args.hidden_coef, output_coef=args.output_coef, method=args.method,
                                 generator=torch.Generator().manual_seed(args.seed))
        runs.append((label, train(model, data, reg, args.epochs, args.lr, args.batch, args.seed, label, meter)))

    print(f"\n{'':<18}{'test acc':>10}   per-layer energy (s = 2, mean over pairs): start -> end")
    for label, hist in runs:
        e0, e1 = hist["energy"][0], hist["energy"][-1]
        layers = ", ".join(f"{k}: {e0[k]:.4f}->{e1[k]:.4f}" for k in e0)
        print(f"{label:<18}{hist['acc'][-1]:>10.4f}   {layers}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"digits_{args.method}.png")
    plot(runs, path)
    print(f"plot saved to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
