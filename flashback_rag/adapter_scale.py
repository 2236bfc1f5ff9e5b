"""Rescale a LoRA adapter: its weight update times a factor, between the base model (0) and the adapter (1).

    flashback rescale --adapter runs/x/adapter --factor 0.5 --out runs/x/adapter-half

A LoRA adapter adds ``(alpha / r) * B @ A`` to each targeted weight, so multiplying PEFT's ``lora_alpha``
(and any ``alpha_pattern`` entry) by ``f`` multiplies the whole update by ``f``: a straight line in weight
space from the base model to the trained one (what WiSE-FT does for full fine-tuning). The weights file
is copied unchanged, so any PEFT loader reads the rescaled folder the same way ``load_model`` does. The
marker rows keep their trained values: the base model has no such tokens, so there is nothing for them
to move toward. ``flashback.json`` records the overall factor and the alpha it was trained with;
rescaling a rescaled folder multiplies the factors.

Why: on SmolLM2 a FlashBack adapter that reads its passages well in the quality benchmark also quotes
them at length in free generation; a smaller factor trades some of the first for less of the second
(``benchmarks/results/demo-copy-share.md`` measures the trade).

    >>> scaled_alpha({"lora_alpha": 32, "alpha_pattern": {"q_proj": 8}}, 0.5)
    {'lora_alpha': 16.0, 'alpha_pattern': {'q_proj': 4.0}}
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .adapters import META_FILE, PEFT_CONFIG_FILE, check_adapter_folder
from .cli_checks import MAX_SCALE, scale_factor
from .errors import AdapterMismatchError, FlashBackError
from .io_utils import atomic_directory, atomic_write_json, check_apart, read_text


def scaled_alpha(peft_config: dict[str, Any], factor: float) -> dict[str, Any]:
    """PEFT's LoRA settings with every alpha multiplied by ``factor`` (the update scales with alpha)."""
    out = dict(peft_config)
    out["lora_alpha"] = float(peft_config["lora_alpha"]) * factor
    if peft_config.get("alpha_pattern"):
        out["alpha_pattern"] = {k: float(v) * factor for k, v in peft_config["alpha_pattern"].items()}
    return out


def rescale_adapter(adapter: str | Path, factor: float, out: str | Path) -> Path:
    """Write ``out``: the LoRA adapter at ``adapter`` with its update multiplied by ``factor`` (> 0)."""
    if not scale_factor(factor):             # the CLI's rule for --factor, for callers of this function
        raise FlashBackError(f"--factor must be a number in (0, {MAX_SCALE:g}] (a larger factor swamps the base "
                             f"weights and overflows them), got {factor!r}")
    adapter, out = Path(adapter), Path(out)
    check_apart(out, "--out", [("--adapter", adapter)])      # never over, into or around the adapter read
    meta = check_adapter_folder(adapter)
    if meta["tune"] != "lora":
        raise AdapterMismatchError(f"{adapter} holds a {meta['tune']!r} model, not a LoRA adapter: only a LoRA "
                                   "adapter keeps its update apart from the base weights")
    try:
        peft_config = json.loads(read_text(adapter / PEFT_CONFIG_FILE))
    except ValueError as err:
        raise AdapterMismatchError(f"{adapter / PEFT_CONFIG_FILE} is corrupt: {err}") from None
    if peft_config.get("peft_type") != "LORA" or not isinstance(peft_config.get("lora_alpha"), (int, float)):
        raise AdapterMismatchError(f"{adapter / PEFT_CONFIG_FILE} is not a LoRA configuration with a numeric "
                                   "lora_alpha")
    before = meta.get("rescaled") or {}
    total = float(before.get("factor", 1.0)) * factor
    if not scale_factor(total):
        raise FlashBackError(f"{adapter} is already rescaled by {before.get('factor')!r}: times {factor:g} makes "
                             f"{total:g}, outside (0, {MAX_SCALE:g}] (the update would swamp the base weights)")
    record = {"factor": total, "trained_lora_alpha": before.get("trained_lora_alpha", peft_config["lora_alpha"]),
              "from": before.get("from", str(adapter))}
    with atomic_directory(out, owner_file=META_FILE) as tmp:
        for item in adapter.iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
        atomic_write_json(tmp / PEFT_CONFIG_FILE, scaled_alpha(peft_config, factor))
        atomic_write_json(tmp / META_FILE, {**meta, "rescaled": record})
    return out
