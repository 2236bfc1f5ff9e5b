"""Compatibility: adapter loading moved to :mod:`flashback_rag.adapters` (it is an inference concern).

    >>> from flashback_rag.training.adapters import apply_adapter
    >>> from flashback_rag import adapters
    >>> apply_adapter is adapters.apply_adapter
    True
"""

from ..adapters import (  # noqa: F401  (re-exported names)
    FORMAT,
    META_FILE,
    VERSION,
    adapter_config,
    apply_adapter,
    base_record,
    check_meta,
    export_merged,
    read_meta,
    tokenizer_fingerprint,
    write_meta,
)
