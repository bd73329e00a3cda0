"""Reproducible CPU runs (methods spec 0.4): deterministic kernels and a fixed thread count,
both restored afterwards. Same seed + same thread count => bitwise-identical results."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def cpu_threads(threads: int | None):
    """torch's intra-op thread count set to `threads` (None: unchanged) and restored on exit."""
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


@contextmanager
def deterministic(warn_only: bool = False):
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)


@contextmanager
def reproducible(threads: int | None, active: bool = True):
    """Both of the above when `active` (heads: on CPU; GPU runs record their flags instead)."""
    if not active:
        yield
        return
    with cpu_threads(threads), deterministic():
        yield
