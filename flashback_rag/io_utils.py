"""Safe file and folder I/O: never leave half a file or half an index behind, never lose what was there.

    >>> import tempfile, pathlib
    >>> from flashback_rag.io_utils import atomic_write_text, read_text
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> atomic_write_text(p, "hello")
    >>> read_text(p)
    'hello'
    >>> _ = p.write_bytes(b"caf\\xe9")                        # Latin-1, not UTF-8
    >>> read_text(p, "--text")
    Traceback (most recent call last):
    ...
    flashback_rag.errors.FlashBackError: --text .../out.txt is not UTF-8 text (byte 0xe9 at line 1); save it as UTF-8

What lives here:
- :func:`read_text` / :func:`iter_text_lines`: strict UTF-8 reads whose error names the file and line;
- :func:`check_output_file` / :func:`check_output_folder`: checks of an output path *before* the long
  work starts (a folder where a file goes, an existing file where a folder goes, a parent that cannot be
  created);
- :func:`atomic_write_text` and :func:`atomic_directory`: a temporary sibling, then a rename. Folder
  swaps hold a lock file (two writers to one path: the second is refused with one message), and an
  interrupted swap is repaired by the next writer or reader (:func:`recover_directory`);
- everything created gets the permissions the user's umask gives (``tempfile`` would make it private).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import FlashBackError

_BOM = "\ufeff"


# ----------------------------------------------------------------------------- reading
def _not_utf8(path: Path, what: str, data: bytes, start: int, line: int) -> FlashBackError:
    label = f"{what} " if what else ""
    return FlashBackError(f"{label}{path} is not UTF-8 text (byte 0x{data[start]:02x} at line {line}); "
                          "save it as UTF-8")


def read_text(path: str | Path, what: str = "") -> str:
    """The whole file as text; bytes that are not UTF-8 give one error naming the file and line.

    ``what`` names the file for the user (``"--forbidden-titles"``). A leading byte-order mark is dropped.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, what, data, err.start, data.count(b"\n", 0, err.start) + 1) from None
    return text[1:] if text.startswith(_BOM) else text


def iter_text_lines(path: str | Path, what: str = "") -> Iterator[tuple[int, str]]:
    """``(line number, line)`` pairs of a UTF-8 file, read one line at a time (bounded memory)."""
    path = Path(path)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(path, what, raw, err.start, number) from None
            yield number, (line[1:] if number == 1 and line.startswith(_BOM) else line)


def read_stdin(what: str = "stdin") -> str:
    """All of stdin as UTF-8 text (whatever the locale says), with one error for other bytes."""
    import sys

    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FlashBackError(f"{what} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})") from None


# ----------------------------------------------------------------------------- output checks
def _existing_ancestor(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(".")


def _check_parent(path: Path, what: str) -> None:
    ancestor = _existing_ancestor(path.absolute())
    if not ancestor.is_dir():
        raise FlashBackError(f"{what} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise FlashBackError(f"{what} {path}: cannot write in {ancestor} (permission denied)")


def check_output_file(path: str | Path, what: str = "output") -> Path:
    """Refuse, before any work, an output file path that cannot be written (a folder, a file as parent)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise FlashBackError(f"{what} {path} is a folder; give the path of a file to write")
    _check_parent(path, what)
    return path


def _same_path(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)          # a hard link or a second mount of the same file
    except OSError:
        return False


def check_apart(output: str | Path, what: str, inputs: Iterable[tuple[str, str | Path | None]],
                may_hold: Iterable[str] = ()) -> None:
    """Refuse an output that would destroy or pollute what the same command reads.

    ``inputs``: ``(name, path)`` pairs (paths that do not exist, ``None`` and ``hf:`` names are not
    files and are skipped). The output may not be one of them, lie inside one of them (a folder that
    is read: an index, an adapter, a corpus) nor hold one (an output folder is replaced whole).
    ``may_hold``: names of input folders the output may lie inside (an index inside its corpus folder:
    the corpus reader skips index folders).

    >>> check_apart("idx/manifest.json", "--output", [("--index", "/")])
    Traceback (most recent call last):
    ...
    flashback_rag.errors.FlashBackError: --output idx/manifest.json is inside the --index folder /; write it elsewhere (a command never writes into a folder it reads)
    """
    out = Path(output).expanduser().resolve()
    may_hold = set(may_hold)
    for name, value in inputs:
        if value is None or str(value).startswith("hf:") or not Path(value).expanduser().exists():
            continue
        source = Path(value).expanduser().resolve()
        kind = "folder" if source.is_dir() else "file"
        if _same_path(out, source):
            raise FlashBackError(f"{what} {output} is the {name} {kind} itself; write the output elsewhere "
                                 "(a command never writes over what it reads)")
        if source.is_dir() and source in out.parents and name not in may_hold:
            raise FlashBackError(f"{what} {output} is inside the {name} folder {value}; write it elsewhere "
                                 "(a command never writes into a folder it reads)")
        if out in source.parents:
            raise FlashBackError(f"{what} {output} holds the {name} {kind} {value}, which writing it would "
                                 "replace; write it elsewhere")


def check_output_folder(path: str | Path, what: str = "output", owner_file: str | None = None) -> Path:
    """Refuse, before any work, an output folder that would replace something the user has.

    An existing *file* is never replaced by a folder. An existing folder is replaced only when it is
    empty or holds ``owner_file`` (it was written by flashback: an index's ``manifest.json``, an
    adapter's ``flashback.json``).
    """
    path = Path(path).expanduser()
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise FlashBackError(f"{what} {path} is an existing file; refusing to replace it with a folder")
        if owner_file is not None and not (path / owner_file).exists() and any(path.iterdir()):
            raise FlashBackError(f"{what} {path} is a folder with other files in it (no {owner_file}); "
                                 "refusing to replace it: give a new or empty folder")
    _check_parent(path, what)
    return path


# ----------------------------------------------------------------------------- permissions
def current_umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_umask_allows(path: Path, folder: bool) -> None:
    # tempfile creates 0700 folders and 0600 files; what we publish should be as shareable as
    # anything else the user creates (a shared index must be readable by the group if the umask says so).
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def _publishable(root: Path) -> None:
    """Every file and folder under ``root`` as the umask allows: some writers make their files private
    whatever the umask says (safetensors writes weights 0600), which would leave a shared adapter or
    model folder unreadable to the group. Links are left alone (chmod would follow them)."""
    mask = current_umask()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, (0o777 if name in dirs else 0o666) & ~mask)


# ----------------------------------------------------------------------------- full disks
_DISK_ERRNOS = {"ENOSPC", "EDQUOT", "EFBIG"}
# How the libraries that write our big files say that a write failed: safetensors (Rust: "... (os error
# 28)"), torch.save (its zip writer: "[enforce fail at inline_container.cc] unexpected pos", or
# "PytorchStreamWriter failed writing"), numpy's tofile ("N requested and M written", an OSError with no
# errno), faiss ("write error").
_WRITE_FAILED = re.compile(r"os error (\d+)|No space left on device|Disk quota exceeded|File too large|"
                           r"PytorchStreamWriter|inline_container|file write failed|requested and \d+ written|"
                           r"write error", re.IGNORECASE)


def _guess_errno(text: str, target: Path) -> int:
    import errno
    import resource

    lowered = text.lower()
    if "no space" in lowered:
        return errno.ENOSPC
    if "quota" in lowered:
        return errno.EDQUOT
    if "too large" in lowered:
        return errno.EFBIG
    with contextlib.suppress(OSError):
        if shutil.disk_usage(_existing_ancestor(target.absolute())).free < 2 ** 20:
            return errno.ENOSPC
    if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
        return errno.EFBIG
    return errno.EIO


def write_failure(err: BaseException, target: str | Path) -> OSError | None:
    """The OSError (with its errno, naming ``target``) for what a library raised when writing into
    ``target`` failed, so the command line tells a full disk in one line whichever library hit it;
    None when ``err`` is not a failed write (a bug keeps its traceback).

    >>> write_failure(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), "m")
    OSError(28, 'No space left on device')
    """
    import errno

    target = Path(target)
    if isinstance(err, OSError) and err.errno is not None:
        if errno.errorcode.get(err.errno) in _DISK_ERRNOS:
            return OSError(err.errno, os.strerror(err.errno), str(target))
        return None
    if not isinstance(err, (OSError, RuntimeError)) and type(err).__name__ != "SafetensorError":
        return None
    found = _WRITE_FAILED.search(str(err))
    if found is None:
        return None
    code = int(found.group(1)) if found.group(1) else _guess_errno(str(err), target)
    return OSError(code, os.strerror(code), str(target))


# ----------------------------------------------------------------------------- atomic files
@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[str]]:
    """A text handle on a temporary sibling of ``path``, renamed onto ``path`` when the block ends.

    If the block raises (or the disk fills up), the temporary file is removed and ``path`` keeps
    what it held.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
        _as_umask_allows(Path(tmp), folder=False)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        failed = write_failure(err, path)     # named by the file the user asked for, not the temporary one
        if failed is not None:
            raise failed from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    with atomic_open(path) as handle:
        handle.write(text)


def finite_json(value: Any) -> Any:
    """``value`` with every float JSON cannot hold (NaN, inf) as None: Python would write ``NaN`` and
    ``Infinity``, which strict JSON readers (jq, browsers, other languages) refuse.

    >>> json.dumps(finite_json({"ratio": float("nan"), "ci": [1.0, float("inf")]}), allow_nan=False)
    '{"ratio": null, "ci": [1.0, null]}'
    """
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def dumps_json(data: Any, **options: Any) -> str:
    """Strict JSON text of ``data`` (non-finite floats as null)."""
    return json.dumps(finite_json(data), allow_nan=False, **options)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, dumps_json(data, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- atomic folders
def _sibling(target: Path, tag: str) -> Path:
    return target.parent / f".{target.name}.{tag}"


# The targets this thread holds through ``holding``: taking their lock again is a no-op, so a command can
# hold its output for its whole run and still write it with ``atomic_directory``.
_HELD = threading.local()


def _held() -> set[str]:
    if not hasattr(_HELD, "targets"):
        _HELD.targets = set()
    return _HELD.targets


@contextlib.contextmanager
def _folder_lock(target: Path, wait: bool) -> Iterator[bool]:
    """Hold ``.NAME.lock`` beside ``target``; yields False when another process holds it (wait=False).

    The lock file is removed when released. A process that opened it before the removal finds, once it
    gets the lock, that the path no longer names the file it locked, and starts again on a fresh one.
    Another thread of this process is refused like another process; a target this thread holds through
    :func:`holding` is taken again at once.
    """
    key = str(target.absolute())
    if key in _held():
        yield True
        return
    try:
        import fcntl
    except ImportError:          # no advisory locks on this platform: writers are not serialised
        yield True
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    path = _sibling(target, "lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)             # the holder before us removed it: lock the new one
    try:
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)             # closing releases the lock


@contextlib.contextmanager
def holding(target: str | Path) -> Iterator[None]:
    """Hold the write lock of ``target`` (a folder or a file) for a whole run, not only while saving:
    a second run writing the same output is refused at its start, instead of both working for an hour
    and the later one silently replacing the other's result."""
    target = Path(target).expanduser()
    key = str(target.absolute())
    with _folder_lock(target, wait=False) as held:
        if not held:
            raise FlashBackError(f"another process is writing {target} right now (lock "
                                 f"{_sibling(target, 'lock')}); try again when it has finished")
        outermost = key not in _held()
        _held().add(key)
        try:
            yield
        finally:
            if outermost:
                _held().discard(key)


def _repair(target: Path) -> None:
    """Finish or undo a swap that was interrupted; drop stale temporary folders. Call under the lock."""
    new, old = _sibling(target, "new"), _sibling(target, "old")
    if new.is_dir():                       # a complete new folder that was not swapped in yet: finish
        if target.exists() and not old.exists():
            os.replace(target, old)
        if not target.exists():
            os.replace(new, target)
    if old.is_dir():
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:                              # nothing newer to put in its place: roll back
            os.replace(old, target)
    # Under the lock no other writer is building, so any temporary folder of this target is stale.
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.building"):
        shutil.rmtree(stale, ignore_errors=True)
    if new.exists():
        shutil.rmtree(new, ignore_errors=True)


def recover_directory(target: str | Path) -> None:
    """Repair an interrupted swap of ``target`` now, unless another process is writing it."""
    target = Path(target)
    if not target.parent.is_dir() or not any(target.parent.glob(f".{glob.escape(target.name)}.*")):
        return
    with _folder_lock(target, wait=False) as held:
        if held:
            _repair(target)


@contextlib.contextmanager
def atomic_directory(target: Path, owner_file: str | None = None, wait: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling and swap it in only when the block finishes.

    If the block raises (or is interrupted), the temporary folder is removed and ``target`` keeps
    whatever it held before: the old folder or nothing. The swap is two renames through ``.NAME.new``
    and ``.NAME.old``; a kill between them is repaired by the next writer (or reader) of ``target``.
    ``owner_file``: see :func:`check_output_folder` (what may be replaced). ``wait``: when another
    process is writing ``target``, wait for it instead of refusing.
    """
    target = Path(target)
    with _folder_lock(target, wait) as held:
        if not held:
            raise FlashBackError(f"another process is writing {target} right now (lock "
                                 f"{_sibling(target, 'lock')}); try again when it has finished")
        _repair(target)
        check_output_folder(target, "output folder", owner_file)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".building", dir=target.parent))
        try:
            _as_umask_allows(tmp, folder=True)
            yield tmp
            _publishable(tmp)
            new, old = _sibling(target, "new"), _sibling(target, "old")
            os.replace(tmp, new)           # complete: from here on the next run rolls forward
        except BaseException as err:
            failed = write_failure(err, target)      # (before the cleanup frees the space again)
            shutil.rmtree(tmp, ignore_errors=True)
            if failed is not None:         # a full disk, told the same way whichever library wrote
                raise failed from None
            raise
        if target.exists():
            os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)


def cache_root() -> Path:
    """Where flashback-rag keeps converted models and demo indexes (``$FLASHBACK_CACHE`` overrides)."""
    env = os.environ.get("FLASHBACK_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flashback-rag"
