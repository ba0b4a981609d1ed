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
