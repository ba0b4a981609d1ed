"""Shared pytest setup."""
import logging

import pytest


@pytest.fixture(autouse=True)
def densedet_log_reaches_caplog():
    """A run in the same process (train(), evaluate_checkpoint) stops the "densedet" logger from
    propagating, so that its lines are not printed twice; tests that read ``caplog`` need them."""
    logger = logging.getLogger("densedet")
    logger.propagate = True
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module's tests: on a 2-core machine shared with other
    jobs, two threads wait on each other (a small model's forward 3-20x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
