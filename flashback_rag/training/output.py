"""Output folders of the training commands: wholly old or wholly new, never half written.

    >>> import tempfile, pathlib
    >>> from flashback_rag.training.output import staged_training_output
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "adapter"
    >>> with staged_training_output(out) as tmp:
    ...     _ = (tmp / "flashback.json").write_text("{}")      # what `train` writes
    >>> sorted(p.name for p in out.iterdir())
    ['checkpoints', 'flashback.json']

``flashback train`` writes into a temporary sibling of ``--out`` and swaps it in when training and
saving finished (``io_utils.atomic_directory``): a kill while an existing adapter is being replaced
leaves the old one whole (never new LoRA weights beside an old ``flashback.json``), and a failed run
leaves no half folder. Checkpoints live in ``.NAME.checkpoints`` while training, so ``--resume`` after a
crash still finds them; they move into the adapter folder (``checkpoints/``, as before) on success.

``flashback prepare`` records its arguments in ``args.json`` before the first shard; a run that failed
before writing any shard leaves a record that protects nothing, and :func:`drop_unused_prepare_record`
removes it so the corrected rerun is not refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..adapters import META_FILE
from ..io_utils import atomic_directory, atomic_write_json


def _distributed() -> bool:
    # Under torchrun / accelerate every rank runs the command and rank 0 saves into the folder the
    # others also name: a per-process temporary folder cannot be shared, so they write --out directly.
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


@contextlib.contextmanager
def staged_training_output(out: str | Path, resume: bool = False) -> Iterator[Path]:
    """The folder to train into; published onto ``out`` when the block finishes without error."""
    out = Path(out)
    if _distributed():
        out.mkdir(parents=True, exist_ok=True)
        yield out
        return
    checkpoints = out.parent / f".{out.name}.checkpoints"
    with atomic_directory(out, owner_file=resumable_owner(out, resume)) as tmp:
        if not resume:
            shutil.rmtree(checkpoints, ignore_errors=True)
        elif not checkpoints.exists() and (out / "checkpoints").is_dir():
            shutil.copytree(out / "checkpoints", checkpoints)     # out itself is about to be replaced
        checkpoints.mkdir(exist_ok=True)
        (tmp / "checkpoints").symlink_to(checkpoints.resolve(), target_is_directory=True)
        try:
            yield tmp
        except BaseException:
            with contextlib.suppress(OSError):    # keep checkpoints for --resume, not an empty folder
                checkpoints.rmdir()
            raise
        (tmp / "checkpoints").unlink()
        os.replace(checkpoints, tmp / "checkpoints")
        _record_final_path(tmp, out)


def resumable_owner(out: Path, resume: bool) -> str:
    """What marks ``out`` as ours: ``flashback.json``, or with ``--resume`` the ``checkpoints/`` a run
    interrupted before this layout (training straight into ``--out``) left behind."""
    return "checkpoints" if resume and (Path(out) / "checkpoints").is_dir() else META_FILE


def _record_final_path(folder: Path, out: Path) -> None:
    """flashback.json records the training settings, whose ``out`` was the temporary folder."""
    path = folder / META_FILE
    if not path.is_file():
        return
    meta = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(meta.get("training"), dict) and "out" in meta["training"]:
        meta["training"]["out"] = str(out)
        atomic_write_json(path, meta)


@contextlib.contextmanager
def taken_back_on_error(out: str | Path) -> Iterator[None]:
    """A fresh ``prepare`` (no ``args.json`` yet) that fails with an error takes back everything it wrote
    into ``out`` (all of ``out`` when it created it), so a corrected rerun to the same ``--out`` is not
    refused as "prepared with other arguments" (a validation split too short, found after the training
    shards were written, did that). A run that was resuming, or one stopped by Ctrl-C or a kill, keeps its
    shards: rerunning the same command resumes from them."""
    out = Path(out)
    fresh = not (out / "args.json").is_file()
    before = set(out.iterdir()) if out.is_dir() else None
    try:
        yield
    except Exception:
        if fresh and out.is_dir():
            if before is None:
                shutil.rmtree(out, ignore_errors=True)
            else:
                for path in set(out.iterdir()) - before:
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
        raise


def drop_unused_prepare_record(out: str | Path) -> None:
    """Remove ``out/args.json`` when no shard was ever written with it (see the module docstring)."""
    out = Path(out)
    record = out / "args.json"
    if record.is_file() and not any(out.glob("*/*.jsonl")):
        record.unlink()
