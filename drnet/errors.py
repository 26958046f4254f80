"""User-facing errors.

A :class:`DrnetError` carries a message meant for a person: what was expected, what was found and
where (file, key, argument). The CLI prints it on one line and exits non-zero, without a traceback
unless ``--debug`` is given.
"""

from __future__ import annotations


class DrnetError(Exception):
    """An error caused by the user's input (arguments, files, checkpoints), not by a bug."""


class CheckpointError(DrnetError):
    """A checkpoint could not be read, failed its hash check, or does not fit the model."""


class DataError(DrnetError):
    """A dataset, list file, image or label is missing, unreadable or inconsistent."""


class SettingsError(DrnetError, ValueError):
    """A task setting or run option out of its range (``LocalizationSettings(top_k=0)``): one
    line naming the field, what it takes and what it got. Also a ``ValueError``."""
