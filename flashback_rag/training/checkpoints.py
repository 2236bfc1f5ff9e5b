"""Which training checkpoint ``flashback train --resume`` continues from: the newest *complete* one.

A checkpoint folder is written file by file (weights, optimizer, scheduler, then the trainer state),
so a full disk or a kill leaves the newest one half written: an empty folder, a truncated weights file,
an optimizer archive without its directory, a trainer state that is not JSON. Handing such a folder to
the Trainer gives a traceback (or, with no optimizer file, silently restarts the optimizer); the older
checkpoint beside it is whole. So every folder is checked, newest first, and the first complete one is
the resume point; the incomplete ones after it are removed (they hold nothing that can be resumed and
the Trainer would write the same step numbers again).

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> (folder / "checkpoint-4").mkdir()                     # interrupted before its first file
    >>> problem(folder / "checkpoint-4", need_optimizer=True)
    'trainer_state.json is missing'
    >>> resume_point(folder, need_optimizer=True) is None and not (folder / "checkpoint-4").exists()
    True
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

_NAME = re.compile(r"^checkpoint-(\d+)$")
WEIGHTS = ("adapter_model.safetensors", "model.safetensors")
OPTIMIZER_FILES = ("optimizer.pt", "scheduler.pt")


def checkpoints(folder: Path) -> list[Path]:
    """``checkpoint-N`` folders, newest (highest N) first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _safetensors_problem(path: Path) -> str | None:
    from ..adapters import _check_safetensors_size
    from ..errors import AdapterMismatchError

    try:
        _check_safetensors_size(path, path.parent)
    except AdapterMismatchError:
        return f"{path.name} is truncated or damaged"
    return None


def problem(checkpoint: Path, need_optimizer: bool) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (None: it is complete)."""
    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json is missing"
    try:
        step = json.loads(state.read_text(encoding="utf-8")).get("global_step")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return "trainer_state.json is not a trainer state"
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return "trainer_state.json records no step"
    weights = [checkpoint / name for name in WEIGHTS if (checkpoint / name).is_file()]
    sharded = (checkpoint / "model.safetensors.index.json").is_file()
    if not weights and not sharded:
        return "its weights are missing"
    for path in weights:
        found = _safetensors_problem(path)
        if found:
            return found
    if need_optimizer:
        for name in OPTIMIZER_FILES:
            path = checkpoint / name
            if not path.is_file():
                return f"{name} is missing"
            try:      # torch.save writes a zip archive; a cut one has no central directory
                with zipfile.ZipFile(path) as archive:
                    archive.namelist()
            except (zipfile.BadZipFile, OSError):
                return f"{name} is truncated or damaged"
    return None


def resume_point(folder: Path, need_optimizer: bool = True) -> Path | None:
    """The newest complete checkpoint in ``folder`` (None when there is none), removing the incomplete
    ones newer than it. ``need_optimizer``: False under DeepSpeed, which keeps its own state files."""
    for checkpoint in checkpoints(folder):
        found = problem(checkpoint, need_optimizer)
        if found is None:
            return checkpoint
        log.warning("%s cannot be resumed from (%s): removing it", checkpoint.name, found)
        shutil.rmtree(checkpoint, ignore_errors=True)
    return None
