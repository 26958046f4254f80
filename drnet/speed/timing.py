"""Wall-clock timing that waits for the device (CUDA) and reports medians.

Re-exported from :mod:`drnet.timing`, drnet's one timing helper (also the demo's budget clock).
"""

from drnet.timing import measure, median, synchronize

__all__ = ["measure", "median", "synchronize"]
