"""Triton backend (placeholder until the Triton kernels land): reports itself unavailable."""


def available() -> bool:
    return False
