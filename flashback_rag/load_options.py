"""Hugging Face loading options, as ``from_pretrained`` users spell them, checked once for ``load_model``.

``model_kwargs`` go to ``AutoModelForCausalLM.from_pretrained`` (``attn_implementation``, ``revision``,
``trust_remote_code``, a ``quantization_config`` where the installed stack supports it),
``tokenizer_kwargs`` to ``AutoTokenizer.from_pretrained``, ``device_map`` places (or spreads) the model
as accelerate does. ``torch_dtype``, the name older transformers used and HuggingFaceLLM /
HuggingFacePipeline examples still pass, is taken as ``dtype`` (transformers 5 warns about the old name).

    >>> from flashback_rag.load_options import LoadOptions
    >>> opts = LoadOptions(model_kwargs={"torch_dtype": "bfloat16", "attn_implementation": "eager"})
    >>> opts.dtype, opts.model_kwargs
    ('bfloat16', {'attn_implementation': 'eager'})
    >>> LoadOptions(model_kwargs={"device_map": "auto"}).device_map
    'auto'
    >>> LoadOptions(model_kwargs={"device": 0})
    Traceback (most recent call last):
    ...
    flashback_rag.errors.ConfigError: model_kwargs: 'device' is load_model's own device= argument, not a from_pretrained option

Progress bars: transformers draws one per model load ("Loading weights"); :func:`quiet_progress`
keeps them for an interactive terminal and drops them from logs, pipes and captured output.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

# model_kwargs keys that are load_model's own arguments (or what it sets itself).
_OWN = {"device": "load_model's own device= argument", "gguf_file": "set by load_model for .gguf files",
        "pretrained_model_name_or_path": "the model name itself"}


def dtype_name(value: Any) -> Any:
    """``torch.float16`` (what HF examples pass as torch_dtype) -> ``"float16"``; the rest as it is."""
    text = str(value)
    return text.removeprefix("torch.") if value is not None and text.startswith("torch.") else value


def merge_option(name: str, given: Any, other: Any) -> Any:
    """One value for an option given in two places (an argument and model_kwargs): equal, or only one."""
    if given is not None and other is not None and given != other:
        raise ConfigError(f"{name} is given twice with different values ({given!r} and {other!r} in "
                          "model_kwargs); give it once")
    return given if given is not None else other


@dataclass
class LoadOptions:
    """What ``load_model`` passes on to ``from_pretrained`` (``dtype`` and ``device_map`` taken out of
    ``model_kwargs`` when given there, as Hugging Face examples often do)."""

    device_map: str | dict[str, Any] | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    tokenizer_kwargs: dict[str, Any] = field(default_factory=dict)
    dtype: Any = None

    def __post_init__(self) -> None:
        for name in ("model_kwargs", "tokenizer_kwargs"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, {})
            elif not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ConfigError(f"{name} must be a dict of keyword arguments, got {type(value).__name__}")
        kwargs = dict(self.model_kwargs)
        for key, why in _OWN.items():
            if key in kwargs:
                raise ConfigError(f"model_kwargs: {key!r} is {why}, not a from_pretrained option")
        for key in ("torch_dtype", "dtype"):
            if key in kwargs:
                self.dtype = merge_option("dtype", self.dtype, dtype_name(kwargs.pop(key)))
        if "device_map" in kwargs:
            self.device_map = merge_option("device_map", self.device_map, kwargs.pop("device_map"))
        if self.device_map is not None and not isinstance(self.device_map, (str, dict)):
            raise ConfigError(f"device_map must be a string (auto, cpu, cuda:0 ...) or a dict of module -> device, "
                              f"got {type(self.device_map).__name__}")
        self.model_kwargs = kwargs
        self.dtype = dtype_name(self.dtype)


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """transformers' progress bars only when stderr is a terminal (restored as they were afterwards)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    interactive = getattr(sys.stderr, "isatty", lambda: False)()
    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled and not interactive:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not interactive:
            hf_logging.enable_progress_bar()


__all__ = ["LoadOptions", "dtype_name", "merge_option", "quiet_progress"]
