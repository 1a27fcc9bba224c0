"""The hsu-kernels benchmark: ``python -m bench`` (see bench/README.md).

Every available backend runs side by side in one process on the same inputs, after a correctness check
against a second backend; the table gives time, speedup over the eager reference, achieved GFLOP/s against
the device's measured matmul peak, and peak memory. ``python -m bench --sweep`` draws time and memory
against N on log-log axes.

Modules: ``workloads`` (the cases and one differentiable step per backend), ``measure`` (timing, memory,
hardware, peak), ``runner`` (the table), ``sweep`` (the scaling plot), ``cli`` (options and presets).
"""
