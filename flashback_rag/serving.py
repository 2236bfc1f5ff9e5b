"""Building FlashBack engines on vLLM: a model folder vLLM can load, the tokenizer, the settings.

vLLM loads plain Hugging Face folders. A shipped FlashBack model or a ``.gguf`` alias is exported once
(LoRA and marker rows merged, the markers in the vocabulary) into the flashback cache; a folder with a
``flashback.json`` (what ``flashback export`` writes) brings its settings.

    >>> from flashback_rag.serving import served_settings
    >>> served_settings(None) is None
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import FlashBackConfig
from .errors import ConfigError


def served_settings(folder: str | os.PathLike | None) -> FlashBackConfig | None:
    """The FlashBack settings recorded in a served model folder, if it is local and has them."""
    from .adapters import META_FILE, adapter_config

    if folder is None or not (Path(folder) / META_FILE).is_file():
        return None
    return adapter_config(folder)


def vllm_folder(name_or_path: str, adapter: str | os.PathLike | None = None,
                config: FlashBackConfig | None = None) -> Path:
    """A folder vLLM can load for ``name_or_path``: itself when it is one (and no adapter or config is
    given), else an export (merged, markers added when the settings use them) cached under the flashback
    cache. ``config``: the settings its ``flashback.json`` records (default: the model's own)."""
    from .adapters import export_merged
    from .io_utils import cache_root

    path = Path(str(name_or_path)).expanduser()
    if adapter is None and config is None and (path / "config.json").is_file():
        return path
    key = _fingerprint(str(name_or_path), adapter, config)
    out = cache_root() / "vllm" / f"{Path(str(name_or_path)).name}-{key}"
    if not (out / "config.json").is_file():
        export_merged(str(name_or_path), adapter, out, config=config)
    return out


def _fingerprint(name: str, adapter: str | os.PathLike | None, config: FlashBackConfig | None = None) -> str:
    """What the export is made of: the name, the settings it records, and the bytes of the adapter folder
    (the given one, or a shipped model's), so a retrained adapter never reuses a stale export."""
    import hashlib

    from .models import SHIPPED, shipped_adapter

    digest = hashlib.sha256(name.encode() + (config.to_json().encode() if config is not None else b""))
    folder = Path(adapter) if adapter is not None else (shipped_adapter(name) if name in SHIPPED else None)
    if folder is not None:
        for file in sorted(f for f in folder.iterdir() if f.is_file() and not f.name.endswith(".md")):
            digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()[:12]


def load_tokenizer(tokenizer: Any, fallback: str | os.PathLike | None):
    """A tokenizer object as is; a name or folder loaded with transformers; None: the fallback folder."""
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    source = tokenizer if tokenizer is not None else fallback
    if source is None:
        raise ConfigError("give tokenizer= (the served model's tokenizer: a folder or a hub id); the server "
                          "does not say where its model lives")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source))


def server_parts(url: str, tokenizer: Any = None, model: str | None = None, timeout: float = 120.0,
                 api_key: str | None = None):
    """(backend, tokenizer, recorded settings or None) for a running ``vllm serve`` at ``url``."""
    from .backends.vllm_server import VLLMServerBackend

    if not url:
        raise ConfigError("a vLLM server needs its URL, e.g. http://127.0.0.1:8000/v1")
    backend = VLLMServerBackend(url, model=model, timeout=timeout, api_key=api_key)
    local = backend.model_path if backend.model_path and Path(backend.model_path).is_dir() else None
    return backend, load_tokenizer(tokenizer, local), served_settings(local)
