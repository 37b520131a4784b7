"""Shared fixtures: a clean TOONIFY_* environment for every test."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.fakes.telegram"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TOONIFY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
