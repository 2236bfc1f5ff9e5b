"""Errors a user can cause, each with one clear message.

The command line catches :class:`FlashBackError` and prints ``flashback: error: <message>`` with exit
code 2; anything else is a bug and keeps its traceback.

    >>> from flashback_rag.errors import ConfigError
    >>> try:
    ...     raise ConfigError("stride must be positive, got 0")
    ... except ValueError as err:          # ConfigError is also a ValueError
    ...     print(err)
    stride must be positive, got 0
"""

from __future__ import annotations


class FlashBackError(Exception):
    """Base class for every error a user can cause (bad flag, missing file, wrong adapter...)."""


class ConfigError(FlashBackError, ValueError):
    """An invalid setting: unknown pattern, non-positive stride, a block that cannot fit the window."""


class ModelNotFoundError(FlashBackError):
    """An unknown model alias, a missing folder or file, or an optional package the model needs."""


class IndexFormatError(FlashBackError):
    """A missing, corrupt or mismatched index folder."""


class EmptyCorpusError(FlashBackError):
    """A corpus with no text in it."""


class RetrievalError(FlashBackError):
    """A retriever failed and the caller asked for strict behaviour."""


class AdapterMismatchError(FlashBackError):
    """An adapter trained for another base model or tokenizer."""


class MissingDependencyError(FlashBackError, ImportError):
    """An optional back-end whose package is not installed; the message says what to install."""
