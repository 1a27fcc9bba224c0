"""Full MHE of a big classifier head: energy and gradient over all N classes in one call.

The original code could only afford mini-batch approximations for heads of 10k classes and more: its
``N x N`` matrix at N = 100,000 is 40 GB in float32. The fused kernels never store it, so the whole head is
one call whose memory is O(N * D):

    python examples/classifier_head.py                    # N = 15,000 x 512 (about a minute on 2 busy CPU cores)
    python examples/classifier_head.py --n 100000         # the full 100,000 x 512 head (CPU: many minutes;
                                                          # a GPU: add --device cuda)

Prints the energy (mean over pairs, s = 2 Riesz by default), the time of forward + backward, and the peak
memory of the call next to what the ``N x N`` float32 matrix alone would need.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch

import hsu_kernels as hk


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=15000, help="classes N (default 15000; try 100000)")
    parser.add_argument("--d", type=int, default=512, help="feature dimension D (default 512)")
    parser.add_argument("--power", default="2", help="MHE power: 0, 1, 2, a0, a1, a2 (default 2)")
    parser.add_argument("--half-space", action="store_true", help="half-space MHE (2N points)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--backend", default="auto", help="kernel backend (default auto)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    head = torch.nn.Linear(args.d, args.n, bias=False, device=device)  # weight: [N, D], one row per class
    name = hk.resolve_backend(args.backend, device, args.d)
    matrix_gb = args.n * args.n * 4 / 1e9 * (4 if args.half_space else 1)
    print(f"classifier head {args.n} x {args.d} on {device.type} ({name} backend), power {args.power}, "
          f"half-space {args.half_space}; the N x N float32 matrix alone would be {matrix_gb:.1f} GB")

    # warm-up on a small head (library loading, thread pools) so the timing is the kernel's
    hk.energy(torch.randn(64, args.d, device=device, requires_grad=True), power=args.power).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = peak_rss_bytes()

    t0 = time.perf_counter()
    e = hk.energy(head.weight, power=args.power, half_space=args.half_space, backend=args.backend)
    e.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0

    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
        what = "peak CUDA memory allocated by the call"
    else:
        peak = max(peak_rss_bytes() - base, 0)
        what = "growth of the process's peak RSS during the call"
    weight_mb = head.weight.numel() * head.weight.element_size() / 1e6
    print(f"energy (mean over pairs) = {e.item():.9f}")
    print(f"forward + backward: {dt:.2f} s")
    print(f"{what}: {peak / 1e6:.1f} MB (the weight itself: {weight_mb:.1f} MB; its gradient the same)")
    print(f"gradient norm: {head.weight.grad.norm().item():.6e}")
    if args.n < 100000:
        print("the full 100,000 x 512 head: python examples/classifier_head.py --n 100000 [--device cuda]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
