"""Make the integration packages importable from a source checkout, installed or not.

The modules of llama_index.llms.flashback live in a namespace package (no __init__.py above
``flashback/``), which pytest's doctest collection would import a second time under the wrong name
``flashback.*`` (a second copy of the hand-over context variable); their doctests run from
``test_llama_index_doctests.py`` instead.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (ROOT, HERE / "llama-index-llms-flashback", HERE / "langchain-flashback"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

collect_ignore_glob = ["llama-index-llms-flashback/llama_index/*"]
