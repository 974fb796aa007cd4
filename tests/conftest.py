"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture()
def single_thread():
    """Tiny CPU models run much faster without intra-op thread contention (restores the thread count after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
