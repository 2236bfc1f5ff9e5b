"""Adapter folders: a standard PEFT adapter plus ``flashback.json`` (markers, settings, base model).

Loading an adapter is an inference concern, so it lives here beside model loading (``models.py``);
``flashback train`` writes the folders with :func:`write_meta` and :func:`base_record`.

    >>> meta = {"format": "flashback-adapter", "version": 1, "tune": "lora", "markers": None,
    ...         "config": {"pattern": "none"}, "base": {}}
    >>> check_meta(meta)["tune"]
    'lora'

Layout of an adapter folder written by ``flashback train --tune lora``::

    adapter_config.json, adapter_model.safetensors   PEFT's own files (LoRA + the marker rows)
    flashback.json   {"tune", "markers": {"left", "right", ...}, "config": FlashBackConfig, "base": {...}}

``load_model(base, adapter=DIR)`` calls :func:`apply_adapter`: it adds the marker tokens, checks that
they land on the recorded ids and that the base model and tokenizer are the ones trained on (else one
:class:`~flashback_rag.errors.AdapterMismatchError`), then loads the PEFT weights. ``--tune full``
writes a whole model folder with the same ``flashback.json``; :func:`export_merged` turns a LoRA
adapter into such a folder that any Hugging Face loader reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hashlib

from .config import MARK_L, MARK_R, FlashBackConfig
from .errors import AdapterMismatchError, MissingDependencyError
from .io_utils import atomic_directory, atomic_write_json, check_apart

META_FILE = "flashback.json"
FORMAT = "flashback-adapter"
VERSION = 1


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the vocabulary (marker tokens left out), to tell tokenizers apart.

    Prepared data records it too (``training/prepare.py``); both must hash alike, which a test checks.
    """
    vocab = {tok: i for tok, i in tokenizer.get_vocab().items() if tok not in (MARK_L, MARK_R)}
    blob = json.dumps(sorted(vocab.items()), ensure_ascii=False).encode("utf-8")
    return hashlib.sha1(blob).hexdigest()[:16]


def _peft():
    try:
        import peft
    except ImportError:
        raise MissingDependencyError("loading an adapter needs peft: pip install 'flashback-rag[train]'") from None
    return peft


def base_record(model, tokenizer, name: str | None = None) -> dict[str, Any]:
    """What identifies the base model and tokenizer an adapter belongs to."""
    cfg = model.config
    vocab = {t for t in tokenizer.get_vocab() if t not in (MARK_L, MARK_R)}
    return {"name": name or getattr(cfg, "_name_or_path", ""), "model_type": cfg.model_type,
            "hidden_size": getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None),
            "num_layers": getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None),
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "tokenizer_size": len(vocab)}


def write_meta(directory: str | Path, *, tune: str, markers, config: FlashBackConfig, base: dict[str, Any],
               training: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = {"format": FORMAT, "version": VERSION, "tune": tune,
            "markers": None if markers is None else {"left": markers.left, "right": markers.right,
                                                     "left_token": config.mark_left,
                                                     "right_token": config.mark_right},
            "config": config.to_dict(), "base": base, "training": training or {}}
    atomic_write_json(Path(directory) / META_FILE, json.loads(json.dumps(meta, default=str)))
    return meta


TUNES = ("lora", "full", "merged")
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"
PICKLE_FILE = "adapter_model.bin"


def check_meta(meta: Any, where: str = META_FILE) -> dict[str, Any]:
    """A ``flashback.json`` record with every field checked (type and value), else one clear error."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in meta:
        raise AdapterMismatchError(f"{where} is not a flashback adapter record")
    version = meta.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise AdapterMismatchError(f"{where}: 'version' must be an integer, got {version!r}")
    if version > VERSION:
        raise AdapterMismatchError(f"adapter format {version} is newer than this flashback-rag reads")
    if meta.get("tune") not in TUNES:
        raise AdapterMismatchError(f"{where}: 'tune' must be one of {', '.join(TUNES)}, got {meta.get('tune')!r}")
    if not isinstance(meta["config"], dict):
        raise AdapterMismatchError(f"{where}: 'config' must be an object of FlashBackConfig fields")
    try:
        config = FlashBackConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as err:
        raise AdapterMismatchError(f"{where}: 'config' is not a valid FlashBackConfig: {err}") from None
    if not isinstance(meta.get("base", {}), dict):
        raise AdapterMismatchError(f"{where}: 'base' must be an object")
    marks = meta.get("markers")
    if marks is None:
        if config.retrieves and config.markers and meta["tune"] == "lora":
            # The engine would add fresh (untrained) markers and PEFT would find trained rows at ids
            # nobody recorded: refuse rather than generate with the wrong embeddings.
            raise AdapterMismatchError(f"{where}: the adapter was trained with markers but records no marker "
                                       "ids ('markers' is missing); the file is damaged: restore it or train again")
    elif not (isinstance(marks, dict)
              and all(isinstance(marks.get(k), int) and not isinstance(marks.get(k), bool) and marks[k] >= 0
                      for k in ("left", "right"))
              and all(isinstance(marks.get(k), str) and marks[k] for k in ("left_token", "right_token"))):
        raise AdapterMismatchError(f"{where}: 'markers' must hold integer ids 'left', 'right' and the "
                                   "strings 'left_token', 'right_token'")
    return meta


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The ``flashback.json`` of an adapter (or merged / fully tuned model) folder."""
    from .io_utils import read_text

    path = Path(directory) / META_FILE
    if not Path(directory).is_dir():
        raise AdapterMismatchError(f"no adapter folder at {directory}")
    if not path.is_file():
        raise AdapterMismatchError(f"{directory} has no {META_FILE}: not an adapter written by `flashback train`")
    try:
        return check_meta(json.loads(read_text(path)), str(path))
    except ValueError as err:      # JSON syntax (UTF-8 problems already say which file and line)
        raise AdapterMismatchError(f"{path} is corrupt: {err}") from None


def check_adapter_folder(directory: str | Path) -> dict[str, Any]:
    """Everything about an adapter folder that can be checked without a model; returns its record.

    A LoRA adapter needs PEFT's ``adapter_config.json`` and ``adapter_model.safetensors``; pickle weights
    (``adapter_model.bin``) are refused: unpickling a file can run any code it carries.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    if meta["tune"] != "lora":
        return meta
    if not (directory / PEFT_CONFIG_FILE).is_file():
        raise AdapterMismatchError(f"adapter {directory} has no {PEFT_CONFIG_FILE} (PEFT's settings)")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        if (directory / PICKLE_FILE).is_file():
            raise AdapterMismatchError(
                f"adapter {directory} holds pickle weights ({PICKLE_FILE}), which can run code when loaded; "
                f"flashback loads only {WEIGHTS_FILE} (convert it where you trust the file)")
        raise AdapterMismatchError(f"adapter {directory} has no {WEIGHTS_FILE}: the weights are missing")
    _check_safetensors_size(weights, directory)
    return meta


def _check_safetensors_size(path: Path, directory: Path) -> None:
    """A truncated file: the header promises more bytes than the file has."""
    import struct

    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise AdapterMismatchError(f"adapter {directory}: {path.name} is truncated ({size} bytes)")
        length = struct.unpack("<Q", head)[0]
        try:
            header = json.loads(handle.read(min(length, size)))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise AdapterMismatchError(f"adapter {directory}: {path.name} is truncated or damaged") from None
    if 8 + length + end > size:
        raise AdapterMismatchError(f"adapter {directory}: {path.name} is truncated ({size} bytes, "
                                   f"its header describes {8 + length + end})")


def adapter_config(directory: str | Path) -> FlashBackConfig:
    """The FlashBack settings an adapter was trained with."""
    return FlashBackConfig.from_dict(read_meta(directory)["config"])


def _check_base(meta: dict[str, Any], model, tokenizer, directory) -> None:
    want = meta.get("base") or {}
    have = base_record(model, tokenizer)
    for key in ("model_type", "hidden_size", "num_layers", "tokenizer_size", "tokenizer_fingerprint"):
        if key in want and want[key] != have[key]:
            raise AdapterMismatchError(
                f"adapter {directory} was trained on {want.get('name') or 'another model'} "
                f"({key} {want[key]!r}), but the loaded model has {key} {have[key]!r}; load it on the same "
                "base model and tokenizer")


def apply_adapter(model, tokenizer, directory: str | Path):
    """Restore an adapter on ``(model, tokenizer)``: markers at their ids, then the PEFT weights.

    Returns the wrapped model (a ``peft.PeftModel`` in eval mode) with ``flashback_config`` set.
    """
    from .models import add_marker_tokens

    directory = Path(directory)
    meta = check_adapter_folder(directory)
    if meta["tune"] != "lora":
        raise AdapterMismatchError(f"{directory} holds a {meta['tune']!r} model, not a LoRA adapter: "
                                   "load it directly with load_model(path)")
    _check_base(meta, model, tokenizer, directory)
    marks = meta.get("markers")
    if marks:
        ids = add_marker_tokens(model, tokenizer, marks["left_token"], marks["right_token"])
        if [ids.left, ids.right] != [marks["left"], marks["right"]]:
            raise AdapterMismatchError(
                f"adapter {directory} expects marker ids {marks['left']}, {marks['right']} but this tokenizer "
                f"gives {ids.left}, {ids.right}: it was trained with another tokenizer")
    peft = _peft()
    device = next(model.parameters()).device
    try:
        wrapped = peft.PeftModel.from_pretrained(model, str(directory), is_trainable=False)
    except (RuntimeError, ValueError, KeyError, OSError) as err:   # shape mismatches, missing keys, bad files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AdapterMismatchError(f"adapter {directory} does not fit this model: {first}") from None
    if getattr(model, "hf_device_map", None) is None:   # a model placed by device_map keeps its layout
        wrapped.to(device)
    wrapped.eval()
    wrapped.flashback_config = FlashBackConfig.from_dict(meta["config"])
    return wrapped


def export_merged(base: str, adapter: str | Path | None, out: str | Path, device: str | None = "cpu",
                  markers: bool | None = None, config: FlashBackConfig | None = None) -> Path:
    """Write a plain Hugging Face model folder that any server (vLLM included) loads as is.

    ``base`` is a model name or folder; with ``adapter`` (a ``flashback train`` folder) its LoRA and
    marker rows are merged into the weights. A shipped FlashBack model name (``smollm2-135m-flashback``)
    exports merged without ``adapter``. ``markers=True`` adds the two marker tokens to a model that has
    none (untrained rows, for serving the layouts before training); by default they are added when the
    settings use them. The folder's ``flashback.json`` records the settings, so ``FlashBack.from_server``
    and ``from_pretrained(..., backend="vllm")`` read them as defaults.
    """
    from .models import add_marker_tokens, load_model

    # the folders read (a local base model, the adapter) are never written over, into or around
    check_apart(out, "--out", [("--model", base), ("--adapter", adapter)])
    model, tokenizer = load_model(base, device=device, adapter=adapter)
    settings = config or getattr(model, "flashback_config", None)     # an adapter's or shipped model's
    meta = dict(read_meta(adapter)) if adapter is not None else {}
    if hasattr(model, "merge_and_unload"):       # an unmerged PEFT model: LoRA and marker rows folded in
        model = model.merge_and_unload()
    if hasattr(model, "flashback_config"):
        del model.flashback_config
    settings = settings or FlashBackConfig()
    want_markers = settings.markers if markers is None else markers
    found = add_marker_tokens(model, tokenizer, settings.mark_left, settings.mark_right) if want_markers else None
    settings = settings.replace(markers=bool(found))
    out = Path(out)
    with atomic_directory(out, owner_file=META_FILE) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if meta:
            meta = {**meta, "tune": "merged", "merged_from": str(adapter), "config": settings.to_dict()}
            atomic_write_json(tmp / META_FILE, json.loads(json.dumps(meta, default=str)))
        else:
            write_meta(tmp, tune="merged", markers=found, config=settings,
                       base=base_record(model, tokenizer, str(base)), training={"exported_from": str(base)})
    return out
