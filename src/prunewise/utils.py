"""Small utilities shared by every layer; imports nothing from prunewise."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def one_thread():
    """Small dense linear algebra (Gram, eigvalsh, greedy steps) is fastest, and far steadier on
    a shared CPU, with one intra-op thread; restore the caller's setting afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)
