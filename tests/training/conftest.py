"""Fixtures of the training tests."""

from __future__ import annotations

import pytest

from frameserve.training import ImagePairs
from tests.training.helpers import small_pairs


@pytest.fixture
def pairs() -> ImagePairs:
    """Two training pairs of odd sizes and one validation pair."""
    return small_pairs()
