import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # test helpers import each other by module name

from tiny_models import write_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("tiny-llama"))
    write_tiny_model(path, "llama")
    return path


@pytest.fixture(scope="session")
def tiny_llm(tiny_llama_dir):
    """One fp32 engine on the tiny Llama, shared by the invariant tests (each checks it is idle)."""
    from model import LLM

    return LLM(
        tiny_llama_dir,
        dtype="float32",
        device="cpu",
        max_num_seqs=16,
        max_num_batched_tokens=256,
        kv_cache_memory=8 * 1024**2,
    )
