"""Fixtures every test folder shares (tests/ and integrations/): the one real vLLM server of a run."""

import os
from pathlib import Path

import pytest


# ----------------------------------------------------------------------------- vLLM
def find_vllm_python():
    """The vLLM environment's interpreter: `make test` builds .venv-vllm and sets FLASHBACK_VLLM_PYTHON."""
    python = os.environ.get("FLASHBACK_VLLM_PYTHON")
    if python:
        if not Path(python).exists():
            raise RuntimeError(f"FLASHBACK_VLLM_PYTHON={python} does not exist (run `make vllm`)")
        return python
    local = Path(__file__).parent / ".venv-vllm" / "bin" / "python"
    if local.exists():
        return str(local)
    pytest.skip("no vLLM environment: `make vllm` builds .venv-vllm (make test does it and runs these)")


VLLM_MODEL = "smollm2-135m-flashback"


@pytest.fixture(scope="session")
def vllm_python():
    return find_vllm_python()


def served_settings_of_the_shipped_model():
    """The shipped model's settings with the block at the paper's positions: vLLM numbers a request's
    tokens itself, so it cannot serve block_positions="before" (the shipped default)."""
    from flashback_rag.adapters import adapter_config
    from flashback_rag.models import shipped_adapter

    return adapter_config(shipped_adapter(VLLM_MODEL)).replace(block_positions="after")


@pytest.fixture(scope="session")
def vllm_model_folder():
    """The shipped FlashBack model exported as a plain folder (markers in the vocabulary), cached; its
    flashback.json records the settings vLLM can serve (served_settings_of_the_shipped_model)."""
    from flashback_rag.serving import vllm_folder

    return vllm_folder(VLLM_MODEL, config=served_settings_of_the_shipped_model())


@pytest.fixture(scope="session")
def vllm_server(vllm_model_folder, vllm_python):
    """One real `vllm serve` on 127.0.0.1 for the whole session (fp32, prefix caching, 32-token blocks)."""
    from flashback_rag.backends.vllm_launch import VLLMServer

    server = VLLMServer(vllm_model_folder, python=vllm_python, name=VLLM_MODEL, dtype="float32",
                        block_size=32, max_model_len=2048, enforce_eager=True,
                        env={"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                             "OMP_NUM_THREADS": os.environ.get("FLASHBACK_VLLM_THREADS", "2")})
    server.start()
    yield server
    server.stop()


class SegmentCounter:
    """A backend that hands every segment to a real one and counts how many are in flight at once
    (``most`` > 1: sequences overlapped). Nothing is faked: the real requests go through."""

    def __init__(self, inner) -> None:
        import threading

        self.inner, self.active, self.most = inner, 0, 0
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def session(self, *args, **kwargs):
        session, counter = self.inner.session(*args, **kwargs), self

        class Counted:
            def segment(self, *a):
                with counter._lock:
                    counter.active += 1
                    counter.most = max(counter.most, counter.active)
                try:
                    yield from session.segment(*a)
                finally:
                    with counter._lock:
                        counter.active -= 1

            def close(self):
                session.close()

        return Counted()


@pytest.fixture(scope="session")
def segment_counter():
    """The :class:`SegmentCounter` class: wrap a backend to see whether sequences overlapped."""
    return SegmentCounter
