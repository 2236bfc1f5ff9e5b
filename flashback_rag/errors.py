"""Errors a user can cause, each with one clear message.

The command line catches :class:`FlashBackError` and prints ``flashback: error: <message>`` with exit
code 2, and does the same for the operating-system errors a user causes (:func:`os_error_message`: a
full disk, a read-only folder...); anything else is a bug and keeps its traceback.

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


class BackendError(FlashBackError):
    """The model backend failed: a vLLM server that is down or died, a request it refused."""


# Operating-system errors a user causes (a full disk, a read-only folder, a folder where a file goes),
# told in one line by the command line; any other OSError is a bug and keeps its traceback.
_OS_REASONS = {
    "ENOSPC": "no space left on device",
    "EDQUOT": "disk quota exceeded",
    "EFBIG": "file too large (file system or ulimit -f)",
    "EACCES": "permission denied",
    "EPERM": "operation not permitted",
    "EROFS": "read-only file system",
    "EISDIR": "is a folder, not a file",
    "ENOTDIR": "not a folder",
    "ENOENT": "no such file or folder",
    "ENAMETOOLONG": "file name too long",
    "EMFILE": "too many open files",
    "EIO": "input/output error (a failing disk, or a network file system that dropped a write)",
}


def os_error_message(err: OSError) -> str | None:
    """One line for an OSError a user can cause (``None`` for the others).

    >>> import errno
    >>> os_error_message(OSError(errno.ENOSPC, "No space left on device", "/data/index/chunks.jsonl"))
    'no space left on device while writing /data/index/chunks.jsonl'
    """
    import errno

    name = errno.errorcode.get(err.errno or -1)
    reason = _OS_REASONS.get(name or "")
    if reason is None:
        return None
    files = [str(f) for f in (err.filename, err.filename2) if f is not None]
    if not files:
        return reason
    verb = "while writing" if name in ("ENOSPC", "EDQUOT", "EFBIG", "EIO") else "on"
    return f"{reason} {verb} {' -> '.join(files)}"
