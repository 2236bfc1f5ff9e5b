"""Training FlashBack: prepare examples, fine-tune LoRA + the two marker rows, evaluate perplexity.

The pipeline, one module each:

- :mod:`.prepare`:  corpus + retriever -> examples ``{passages, src, tgt}`` (token ids) per split;
- :mod:`.data`:     an example -> the token layout of a pattern (``patterns.logical_context``), batching;
- :mod:`.tuning`:   LoRA target modules per ``config.model_type``, the PEFT config with the marker rows;
- :mod:`.trainer`:  the Hugging Face Trainer with the loss on ``tgt`` only (markers never predicted);
- :mod:`.adapters`: adapter folders (PEFT files + ``flashback.json``), loading with checks, merging;
- :mod:`.evaluate`: perplexity on prepared data and sliding-window perplexity on raw text;
- :mod:`.commands`: ``flashback prepare | train | eval ppl | export``.

Nothing here is imported by the engine unless an adapter is loaded, so inference needs no PEFT.
"""
