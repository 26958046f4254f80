"""Kept only for test files that still import from here (``test_engine.py``): the helpers moved
to ``conftest.py``; import them from there (or use the ``one_thread`` fixture)."""

from conftest import TINY_CHANNELS, make_list_dataset, scene  # noqa: F401
from conftest import torch_on_one_thread as one_thread  # noqa: F401
