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
    line naming the field (``LocalizationSettings.top_k``), what it takes and what it got. Also
    a ``ValueError``. :meth:`as_flags` names the command-line options instead."""

    def as_flags(self) -> str:
        """The message with each ``SomeSettings.field_name`` (or ``...Options.``/``...Data.``)
        written as the option ``--field-name`` that sets it on the command line."""
        import re

        return re.sub(
            r"\b[A-Z]\w*(?:Settings|Options|Data)\.(\w+)",
            lambda m: "--" + m[1].replace("_", "-"),
            str(self),
        )
