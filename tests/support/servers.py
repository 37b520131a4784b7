"""Real PostgreSQL and Redis servers for the tests: Debian's binaries, free ports, temp folders.

Never mocks. A test that needs one takes the `postgres_url` or `redis_server` fixture; without
the binaries it is skipped, unless TOONIFY_TEST_SERVERS=required (CI sets it: there a missing
server is a failure, not a skip). PostgreSQL refuses to run as root, so as root the server runs
as the `postgres` user that Debian's package creates.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

START_TIMEOUT = 30.0
REQUIRED = os.environ.get("TOONIFY_TEST_SERVERS") == "required"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _missing(what: str) -> NoReturn:
    message = f"{what} is not installed (apt-get install {what}); .ci/run installs it"
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


def _wait_until(ready: Callable[[], bool], what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} while starting")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start within {START_TIMEOUT:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------- PostgreSQL


def _postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return versions[-1].parent if versions else None


@dataclass
class PostgresServer:
    """A throwaway cluster; `database()` makes a fresh, empty database for one test."""

    bin: Path
    port: int
    folder: Path
    user: str = "postgres"
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """CREATE DATABASE through psql (no driver needed), and its SQLAlchemy URL."""
        name = f"t_{secrets.token_hex(6)}"
        self._psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def start(self) -> None:
        data = self.folder / "data"
        self._as_owner([str(self.bin / "initdb"), "-D", str(data), "-U", self.user, "-A", "trust"])
        command = [
            str(self.bin / "postgres"),
            "-D",
            str(data),
            "-p",
            str(self.port),
            "-k",
            str(self.folder),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
        ]
        self._process = subprocess.Popen(
            self._owner_prefix() + command,
            stdout=subprocess.DEVNULL,
            stderr=(self.folder / "postgres.log").open("wb"),
        )
        _wait_until(self._ready, "postgres", self._process)

    def stop(self) -> None:
        if self._process is not None:
            _stop(self._process)

    def _ready(self) -> bool:
        probe = [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(probe, check=False).returncode == 0

    def _psql(self, sql: str) -> None:
        command = [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port)]
        subprocess.run(
            [*command, "-U", self.user, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql],
            check=True,
            capture_output=True,
        )

    def _owner_prefix(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _as_owner(self, command: list[str]) -> None:
        subprocess.run(self._owner_prefix() + command, check=True, capture_output=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    binaries = _postgres_bin()
    if binaries is None:
        _missing("postgresql")
    folder = Path(tempfile.mkdtemp(prefix="toonify-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    server = PostgresServer(binaries, free_port(), folder)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """A new empty database on the session's server."""
    return postgres.database()


# ---------------------------------------------------------------------------- Redis


@dataclass
class RedisServer:
    """One redis-server; `restart()` keeps its port (and its data only with `persistent`)."""

    binary: Path
    port: int
    folder: Path
    persistent: bool = False
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = ["--appendonly", "yes"] if self.persistent else ["--appendonly", "no"]
        command = [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--save",
            "",
            *persistence,
        ]
        self._process = subprocess.Popen(
            command, stdout=(self.folder / "redis.log").open("wb"), stderr=subprocess.STDOUT
        )
        _wait_until(self._ready, "redis-server", self._process)

    def stop(self) -> None:
        if self._process is not None:
            _stop(self._process)

    def kill(self) -> None:
        """SIGKILL: what a crash looks like to the clients."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@contextlib.contextmanager
def redis_server(*, persistent: bool = False) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server")
    folder = Path(tempfile.mkdtemp(prefix="toonify-redis-"))
    server = RedisServer(Path(binary), free_port(), folder, persistent)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A fresh redis-server per test (no persistence): tests may kill and restart it."""
    with redis_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on SQLite (a file in tmp_path) and on a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'toonify.db'}"
    return str(request.getfixturevalue("postgres_url"))
