"""Shared fixtures: a clean TOONIFY_* environment for every test."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import torch

pytest_plugins = ["tests.fakes.telegram", "tests.support.servers"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TOONIFY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """setup_logging binds the root logger to a capture stream that closes after the test;
    later log lines (aiosqlite's worker threads) would hit it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models are fastest on one thread; two spin against each other on a busy CI box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
