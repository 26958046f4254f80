"""Fixtures that several test files share (the plain helpers are in ``helpers.py``)."""

from __future__ import annotations

import pytest
from helpers import torch_on_one_thread

# a module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``
one_thread = pytest.fixture(scope="module", name="one_thread")(torch_on_one_thread)
