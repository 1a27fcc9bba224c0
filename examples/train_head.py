"""A classifier head with one slice of the classes per rank, trained by the MHE of all its classes.

    torchrun --nproc_per_node 2 examples/train_head.py        # 8192 classes x 128, 2 CPU processes (gloo): ~1 min
    torchrun --nproc_per_node 4 examples/train_head.py --classes 1000000 --dim 512       # 4 GPUs (NCCL)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        examples/train_head.py --classes 1000000 --dim 512                                 # 2 machines

Each rank holds only its own rows of the head (a model-parallel head: no rank ever holds all the classes);
``sharded_energy`` computes the energy of all of them (Riesz s = 1, mean over all pairs of classes), the same
value on every rank, and its backward gives each rank the gradient of its own rows. Rank 0 prints the energy
every ``--every`` steps: it falls from about 1.0 towards 0.709, the energy of points spread uniformly over
the sphere in D = 128. The training loop is the regularizer alone; in a real one the loss is
``task_loss + coef * reg``.

Why the energy visibly moves here, while a ``torch.randn`` head trained by SGD at lr 0.1 prints the same
energy, to every digit, at every step:

- The start: the rows are drawn around one shared direction (``randn + 1``: any two classes at a cosine of
  about 1/2), as in a head whose classes have bunched together. Rows from ``torch.randn`` alone are already
  nearly uniform on the sphere: their energy is within about 2e-4 (relative) of what training reaches.
- The step: with ``reduction="mean"`` a row's gradient is a mean over its N - 1 pairs, so it shrinks as 1/N,
  and the energy depends only on directions, so it is also divided by the row's norm (about sqrt(D)). For
  8000 ``torch.randn`` rows of D = 128 the largest row gradient of ``10 * energy`` is about 1e-6: SGD at lr 0.1
  moves a row by 1e-8 of its length per step, below what a float32 energy can show. Adam's step does not
  depend on that scale; plain SGD needs a learning rate of about 3e4 here (``--optimizer sgd --lr 30000``).

The rows of each rank are drawn from a generator seeded by ``--seed`` and the rank, so a run is reproducible
for a given number of ranks.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist

from hsu_kernels.distributed import sharded_energy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, default=8192, help="classes (rows of the head) in all (default 8192)")
    ap.add_argument("--dim", type=int, default=128, help="feature dimension D (default 128)")
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    ap.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="default adam")
    ap.add_argument("--lr", type=float, default=0.02, help="learning rate (default 0.02)")
    ap.add_argument("--every", type=int, default=10, help="print every this many steps, and the last (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.classes < world:
        if rank == 0:
            print(f"--classes {args.classes}: fewer classes than ranks ({world})", file=sys.stderr)
        dist.destroy_process_group()
        return 2
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")

    lo, hi = args.classes * rank // world, args.classes * (rank + 1) // world
    gen = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + rank)
    # this rank's classes only, drawn around one shared direction (see the module docstring)
    head = torch.nn.Parameter(torch.randn(hi - lo, args.dim, device=device, generator=gen) + 1.0)
    opt = (torch.optim.Adam if args.optimizer == "adam" else torch.optim.SGD)([head], lr=args.lr)
    if rank == 0:
        print(f"{args.classes} classes x {args.dim} over {world} ranks ({dist.get_backend()}, {device.type}; "
              f"{hi - lo} rows on rank 0), {args.optimizer} lr {args.lr:g}", flush=True)

    t0 = time.perf_counter()
    first = last = None
    for step in range(args.steps):
        reg = sharded_energy(head, kind="riesz", s=1.0)  # MHE of all the classes, the same value on every rank
        loss = reg  # in training: task_loss + coef * reg
        opt.zero_grad()
        loss.backward()  # head.grad: the gradient for this rank's rows only
        opt.step()
        last = reg.item()
        first = last if first is None else first
        if rank == 0 and (step % args.every == 0 or step == args.steps - 1):
            print(f"step {step:4d}  energy {last:.7f}", flush=True)
    if rank == 0 and first is not None:
        print(f"energy {first:.7f} -> {last:.7f} in {args.steps} steps, {time.perf_counter() - t0:.1f} s",
              flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
