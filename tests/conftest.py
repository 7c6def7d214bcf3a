"""Shared fixtures: tiny offline models and the path to the read-only shared datasets."""

from __future__ import annotations

import logging
import os
from pathlib import Path

# Before anything imports huggingface_hub, which reads HF_HUB_OFFLINE once at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
from tiny_models import save_tiny_model

SHARED_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama + ChatML tokenizer saved to disk, shared by the whole session (treat as read-only)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """`../shared/data` next to the checkout; tests that need it are skipped where it is absent."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA_DIR} (only present on the project machines)")
    return SHARED_DATA_DIR


@pytest.fixture(autouse=True)
def _lm_eval_logger_restored():
    """lm-eval's `setup_logging`, run in-process by `slowed-eval`, stops the `lm_eval` logger (parent of
    `lm_eval.slowed`) propagating to the root logger, where `caplog` listens, and binds a handler to that
    test's captured stderr, which later tests find closed. Restore both after every test."""
    lm_eval_logger = logging.getLogger("lm_eval")
    handlers, propagate = list(lm_eval_logger.handlers), lm_eval_logger.propagate
    yield
    lm_eval_logger.handlers[:] = handlers
    lm_eval_logger.propagate = propagate
