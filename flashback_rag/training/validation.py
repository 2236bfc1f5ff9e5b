"""Checks of training inputs that run before a model is trained or evaluated (one clear error each).

    >>> import json, tempfile, pathlib
    >>> from flashback_rag.training.validation import check_prepared_folder
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "args.json").write_text(json.dumps({"format": "flashback-prepared", "config": {},
    ...                                               "tokenizer": {"fingerprint": "x", "vocab_size": 100}}))
    >>> (d / "train").mkdir()
    >>> _ = (d / "train" / "00000.jsonl").write_text('{"passages": [[5]], "src": [1, 2], "tgt": [300]}\\n')
    >>> check_prepared_folder(d, ["train"])
    Traceback (most recent call last):
    ...
    flashback_rag.errors.FlashBackError: .../train/00000.jsonl line 1: token id 300 in 'tgt' is past the vocabulary (100 ids); ...

What is checked: a prepared folder (``args.json`` and every example of the splits used: UTF-8, JSON,
the keys and types an example needs, token ids inside the model's vocabulary), and ``--lora-targets``
against the module names of the model (built on the ``meta`` device: no weights are read).
The training modules themselves stay as they are; ``flashback`` runs these checks first
(``cli_checks.py``), so a wrong input fails in a second instead of after loading or training.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, FlashBackError
from ..io_utils import iter_text_lines, read_text

PREPARED_FORMAT = "flashback-prepared"


def _token_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def check_example(example: Any, vocab: int | None) -> str | None:
    """What is wrong with one prepared example (None when nothing is)."""
    if not isinstance(example, dict):
        return "not a JSON object"
    missing = [key for key in ("passages", "src", "tgt") if key not in example]
    if missing:
        return f"missing key(s) {', '.join(missing)}"
    if not isinstance(example["passages"], list) or not all(_token_list(p) for p in example["passages"]):
        return "'passages' must be a list of lists of token ids"
    for key in ("src", "tgt"):
        if not _token_list(example[key]):
            return f"'{key}' must be a list of token ids"
    if not example["tgt"]:
        return "'tgt' is empty (nothing to score)"
    for key, ids in (("src", example["src"]), ("tgt", example["tgt"]),
                     ("passages", [t for p in example["passages"] for t in p])):
        bad = next((t for t in ids if t < 0 or (vocab is not None and t >= vocab)), None)
        if bad is not None:
            return (f"token id {bad} in '{key}' is past the vocabulary ({vocab} ids); "
                    "the data was prepared for another model: run `flashback prepare` again")
    return None


def check_window(record: Any, vocab: int | None) -> str | None:
    """What is wrong with one packed-training window record (``SPLIT/windows/*.jsonl``), if anything."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [key for key in ("tokens", "points", "passages") if key not in record]
    if missing:
        return f"missing key(s) {', '.join(missing)}"
    if not _token_list(record["tokens"]) or not _token_list(record["points"]):
        return "'tokens' and 'points' must be lists of integers"
    passages = record["passages"]
    if not isinstance(passages, list) or len(passages) != len(record["points"]) or not all(
            isinstance(block, list) and all(_token_list(p) for p in block) for block in passages):
        return "'passages' must hold, for each point, a list of lists of token ids"
    if any(not 0 < at <= len(record["tokens"]) for at in record["points"]):
        return "a point lies outside the window's tokens"
    ids = record["tokens"] + [t for block in passages for p in block for t in p]
    bad = next((t for t in ids if t < 0 or (vocab is not None and t >= vocab)), None)
    if bad is not None:
        return (f"token id {bad} is past the vocabulary ({vocab} ids); the data was prepared for another "
                "model: run `flashback prepare` again")
    return None


def _check_lines(files: list[Path], check, vocab: int | None, what: str, limit: int | None) -> int:
    count = 0
    for file in files:
        for number, line in iter_text_lines(file, what):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                raise FlashBackError(f"{file} line {number} is not valid JSON: {err}") from None
            problem = check(record, vocab)
            if problem:
                raise FlashBackError(f"{file} line {number}: {problem}")
            count += 1
            if limit is not None and count >= limit:
                return count
    return count


def _split_files(folder: Path, split: str, what: str) -> list[Path]:
    path = folder / split
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else ([path] if path.is_file() else [])
    if not files:
        raise FlashBackError(f"{what} {folder} has no {split!r} examples ({path} is missing or empty); "
                             "run `flashback prepare`")
    return files


def read_prepared_record(folder: str | Path, what: str = "--data") -> dict[str, Any]:
    """``args.json`` of a prepared folder, checked."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FlashBackError(f"{what} {folder} is not a folder; give the folder `flashback prepare` wrote")
    path = folder / "args.json"
    if not path.is_file():
        raise FlashBackError(f"{what} {folder} is not a prepared data folder (no args.json); run `flashback prepare`")
    try:
        record = json.loads(read_text(path, what))
    except ValueError as err:
        raise FlashBackError(f"{path} is corrupt: {err}") from None
    if not isinstance(record, dict) or record.get("format", PREPARED_FORMAT) != PREPARED_FORMAT \
            or not isinstance(record.get("config"), dict) or not isinstance(record.get("tokenizer"), dict):
        raise FlashBackError(f"{path} is not a `flashback prepare` record (format, config, tokenizer)")
    return record


def check_prepared_folder(folder: str | Path, splits: Iterable[str], what: str = "--data",
                          vocab: int | None = None, limit: int | None = None) -> dict[str, int]:
    """Check ``args.json`` and every example of ``splits``; return the number of examples per split.

    ``vocab``: the model's vocabulary size; the smaller of it and the one ``args.json`` records is used.
    """
    folder = Path(folder)
    record = read_prepared_record(folder, what)
    recorded = record["tokenizer"].get("vocab_size")
    sizes = [v for v in (vocab, recorded) if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    vocab = min(sizes) if sizes else None
    counts = {}
    for split in splits:
        count = _check_lines(_split_files(folder, split, what), check_example, vocab, what, limit)
        if count == 0:
            raise FlashBackError(f"{what} {folder}: the {split!r} split holds no examples; run `flashback prepare`")
        counts[split] = count
        windows = sorted((folder / split / "windows").glob("*.jsonl"))   # packed training reads these
        if windows:
            counts[f"{split}_windows"] = _check_lines(windows, check_window, vocab, what, limit)
    return counts


def model_config(name: str):
    """The transformers config of a model name as ``load_model`` reads it, without its weights.

    None when it cannot be read offline (a hub id not in the cache): loading then reports it.
    """
    from transformers import AutoConfig

    from ..models import ALIASES, convert_gguf

    if name.startswith("tiny-random-") and name in ALIASES:
        return ALIASES[name][1]()[0].config
    try:
        if name in ALIASES:
            return AutoConfig.from_pretrained(ALIASES[name][1]())
        path = Path(name).expanduser()
        if path.suffix == ".gguf" and path.is_file():
            return AutoConfig.from_pretrained(convert_gguf(path))
        return AutoConfig.from_pretrained(str(path) if path.is_dir() else name, local_files_only=True)
    except (OSError, ValueError):
        return None


def model_vocab_size(name: str) -> int | None:
    """Rows of the model's input embedding (a token id at or past it cannot be looked up), if known."""
    config = model_config(name)
    size = getattr(config, "vocab_size", None) if config is not None else None
    return size if isinstance(size, int) and size > 0 else None


def module_names(config) -> list[str]:
    """Every module name of a causal LM built from ``config`` on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [name for name, _ in model.named_modules() if name]


def check_positions(length: Any, model, what: str, fix: str) -> None:
    """Refuse examples or windows of ``length`` positions when the model reads fewer: a learned
    position table (GPT-2, OPT) has no row past its end and fails deep inside the forward."""
    from ..models import max_positions

    limit = max_positions(model)
    if limit is not None and isinstance(length, int) and not isinstance(length, bool) and length > limit:
        name = getattr(model.config, "_name_or_path", "") or model.config.model_type
        raise ConfigError(f"{what} is {length} positions long, but {name} reads at most {limit}; "
                          + fix.format(limit=limit))


def hidden_size(config) -> int | None:
    value = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    return value if isinstance(value, int) and value > 0 else None


def check_lora_rank(rank: int, config, model: str = "the model") -> None:
    """A LoRA rank above the hidden size adds parameters (and memory: ``--lora-r 1000000`` asks for
    terabytes) but no expressive power: ``B @ A`` cannot have a higher rank than its smaller side."""
    hidden = hidden_size(config) if config is not None else None
    if hidden is not None and rank > hidden:
        raise ConfigError(f"--lora-r {rank} is more than the hidden size of {model} ({hidden}): a LoRA update "
                          f"cannot have a rank above it; use at most {hidden}")


def check_lora_targets(model: str, targets: Iterable[str]) -> None:
    """Refuse ``--lora-targets`` that name no module of ``model`` (PEFT's own matching: a name or a suffix)."""
    config = model_config(model)
    if config is None:
        return
    names = module_names(config)
    unknown = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unknown:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names if "." in n and not n.rsplit(".", 1)[-1].isdigit()})
        raise ConfigError(f"--lora-targets {' '.join(unknown)}: no such module in {model} "
                          f"({config.model_type}); module names: {', '.join(leaves)}")
