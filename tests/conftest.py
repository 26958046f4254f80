"""Fixtures that several test files share (the plain helpers are in ``helpers.py``)."""

from __future__ import annotations

import os
import tempfile

import pytest
from helpers import torch_on_one_thread

# drnet's cache (measured layouts, ...) lives in a folder of this test session, shared with the
# processes the tests start: runs compared with each other make the same measured choices
os.environ["DRNET_CACHE_DIR"] = tempfile.mkdtemp(prefix="drnet-test-cache-")

# a module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``
one_thread = pytest.fixture(scope="module", name="one_thread")(torch_on_one_thread)
