"""Where the test data lives: the repository, the test model folders, shipped test frames."""

from __future__ import annotations

from pathlib import Path

#: The repository's root folder.
REPO = Path(__file__).resolve().parents[2]
#: Model folders the tests serve besides the built-ins (one of them fails to load on purpose).
TEST_MODELS = REPO / "tests" / "models"
#: Plug-ins that misbehave on purpose: raise, loop, exit, segfault, hog memory, bad outputs.
MISBEHAVING = REPO / "tests" / "models_misbehaving"
#: Small frames shipped with the tests (``sintel/``: three frames of a real plate).
TEST_DATA = REPO / "tests" / "data"
