"""Shared pytest fixtures."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch


@contextmanager
def torch_threads(n: int):
    """Run with ``n`` intra-op threads, restoring the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture()
def single_thread():
    """Tiny CPU models run much faster without intra-op thread contention."""
    with torch_threads(1):
        yield


@pytest.fixture()
def two_threads():
    """Both cores of the CI machine, for the few tests that train a network for real."""
    with torch_threads(2):
        yield
