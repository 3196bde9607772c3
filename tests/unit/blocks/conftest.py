"""Shared settings for the blocks unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # These tensors are tiny: on a shared 2-core machine two OpenMP threads mostly wait for
    # each other (10x slower here). Restored afterwards so other systems' tests are unaffected.
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):  # the same for OpenBLAS/OpenMP under NumPy and scikit-learn
        yield
    torch.set_num_threads(before)
