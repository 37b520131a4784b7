"""Every `toonify bench` command runs to its table on tiny sizes: the benchmarks wrap the real
code paths, so an API change that breaks one shows here rather than on the serving box."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bots.cli import app
from tests.support.servers import RedisServer


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["storage", "--ops", "5", "--runs", "1"], "consume"),
        (["generator", "--resolutions", "16", "--batches", "1", "--runs", "1"], "Images/s"),
        (["pipeline", "--resolution", "32", "--steps", "2", "--runs", "1"], "invert/step"),
        (["service", "--jobs", "2", "--runs", "1", "--batches", "1", "--steps", "1"], "jobs/s"),
        (["prepare", "--copies", "1", "--runs", "1", "--processes", "1"], "1 process"),
        (["e2e", "--resolution", "32", "--runs", "1", "--steps", "1", "--users", "2"], "photos/s"),
    ],
)
def test_bench_commands_print_their_table(
    monkeypatch: pytest.MonkeyPatch, args: list[str], expected: str
) -> None:
    monkeypatch.setenv("TOONIFY_MODELS_DEVICE", "cpu")
    monkeypatch.setenv("TOONIFY_INVERT_LOSS", "pixel")
    monkeypatch.setenv("TOONIFY_FACES_BACKEND", "dlib")
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, ["bench", *args])
    assert result.exit_code == 0, result.output
    assert expected in result.output


def test_bench_broker_prints_its_table_with_worker_processes(
    monkeypatch: pytest.MonkeyPatch, redis: RedisServer
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    args = ["--redis", redis.url, "--jobs", "2", "--runs", "1", "--steps", "1", "--workers", "1"]
    result = CliRunner().invoke(app, ["bench", "broker", *args])
    assert result.exit_code == 0, result.output
    assert "through Redis" in result.output
    assert "1 worker(s)" in result.output
