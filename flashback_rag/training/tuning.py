"""What gets trained: LoRA on the attention projections plus the two marker rows, or everything.

    >>> lora_targets("llama")
    ['q_proj', 'k_proj', 'v_proj', 'o_proj']
    >>> LoraSettings(r=0)
    Traceback (most recent call last):
    ...
    flashback_rag.errors.ConfigError: LoRA rank r must be a positive integer, got 0

The attention projections are looked up by ``config.model_type`` in :data:`LORA_TARGETS` (never by the
model's path). Only the marker rows of the input embedding are trained, through PEFT's
``trainable_token_indices``: the rest of the embedding stays bit-identical, wherever the markers sit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError, MissingDependencyError

# model_type -> the attention projection modules LoRA wraps.
LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "gpt2": ["c_attn", "attn.c_proj"],
    "gpt_neox": ["query_key_value", "attention.dense"],
    "falcon": ["query_key_value", "self_attention.dense"],
    "bloom": ["query_key_value", "self_attention.dense"],
}

TUNES = ("lora", "full")


def lora_targets(model_type: str) -> list[str]:
    """The default LoRA target modules of an architecture."""
    try:
        return list(LORA_TARGETS[model_type])
    except KeyError:
        raise ConfigError(f"no default LoRA target modules for model_type {model_type!r}; pass "
                          f"--lora-targets (known: {', '.join(sorted(LORA_TARGETS))})") from None


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (the seed's: r=16, alpha=32, dropout 0.05)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: list[str] | None = field(default=None)   # None: from LORA_TARGETS by model_type

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if self.alpha <= 0:
            raise ConfigError(f"LoRA alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")


def _peft():
    try:
        import peft
    except ImportError:
        raise MissingDependencyError("training needs peft: pip install 'flashback-rag[train]'") from None
    return peft


def lora_model(model, settings: LoraSettings, marker_ids: list[int] | None):
    """Wrap ``model`` in a PEFT LoRA model; only LoRA weights and the marker rows are trainable."""
    from .validation import check_lora_rank

    check_lora_rank(settings.r, model.config, getattr(model.config, "_name_or_path", "") or "the model")
    peft = _peft()
    targets = settings.targets or lora_targets(model.config.model_type)
    config = peft.LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets,
        task_type="CAUSAL_LM", bias="none",
        fan_in_fan_out=model.config.model_type == "gpt2",     # GPT-2 uses Conv1D (transposed) layers
        # The input embedding's marker rows only; PEFT ties the output rows when the weights are tied.
        trainable_token_indices=list(marker_ids) if marker_ids else None)
    return peft.get_peft_model(model, config)


def full_model(model):
    """Full fine-tuning: every parameter trainable."""
    for param in model.parameters():
        param.requires_grad_(True)
    return model
