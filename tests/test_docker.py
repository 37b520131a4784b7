"""The Docker files, checked without a Docker engine: hadolint, the compose-spec schema, and
what compose.yaml and the README rely on the image to do."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from bots.config import TelegramSettings
from inference.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A dev tool installed beside this interpreter (scripts/setup EXTRAS=dev)."""
    path = shutil.which(name, path=str(BIN))
    assert path is not None, f"{name} is missing: run EXTRAS=dev scripts/setup"
    return path


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n(\s*#.*\n)*", " ", (ROOT / "Dockerfile").read_text())
    found = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def image_env() -> dict[str, str]:
    """The variables the final image sets (ENV KEY=VALUE ...)."""
    pairs = " ".join(args for keyword, args in final_stage() if keyword == "ENV")
    return dict(re.findall(r"(\w+)=(\S+)", pairs))


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_hadolint_passes_the_dockerfile() -> None:
    result = subprocess.run(
        [tool("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_follows_the_compose_specification() -> None:
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "compose.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_code_change_rebuilds_only_the_layers_after_the_dependencies() -> None:
    stage = final_stage()
    copies = [args for keyword, args in stage if keyword == "COPY"]
    assert copies[0] == "pyproject.toml /tmp/pyproject.toml", copies
    assert copies[1].startswith("--from=wheel "), copies
    installs = [i for i, (keyword, args) in enumerate(stage) if "pip install" in args]
    project = next(i for i, (_, args) in enumerate(stage) if args.startswith("--from=wheel "))
    # torch and every dependency are installed before the project's wheel arrives.
    assert [i for i in installs if i < project] == installs[:-1]
    assert "--no-deps /wheels/" in stage[installs[-1]][1]


def test_torch_is_pinned_to_the_version_scripts_setup_installs() -> None:
    setup = re.findall(r"torch==([\d.]+)", (ROOT / "scripts" / "setup").read_text())
    docker = re.findall(r"torch==([\d.]+)", (ROOT / "Dockerfile").read_text())
    assert len(set(setup)) == 1
    assert docker and set(docker) == set(setup)


def test_the_build_context_holds_every_file_the_dockerfile_copies() -> None:
    kept = {line[1:] for line in (ROOT / ".dockerignore").read_text().split() if line[0] == "!"}
    for keyword, args in instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert source in kept, f"COPY {source}: excluded by .dockerignore"
                assert (ROOT / source).exists()


def test_compose_mounts_and_publishes_what_the_image_uses() -> None:
    steps = dict(final_stage())
    service = compose()["services"]["toonify"]
    assert {volume.split(":")[1] for volume in service["volumes"]} == set(
        re.findall(r'"(/\w+)"', steps["VOLUME"])
    )
    assert service["configs"][0]["target"] == f"{steps['WORKDIR']}/config.toml"
    published = {port.rsplit(":", 1)[1] for port in service["ports"]}
    assert published == {image_env()["TOONIFY_OPS_PORT"], str(TelegramSettings().webhook_port)}
    assert service["restart"] == "unless-stopped"
    # docker stops with SIGKILL after the grace period: it must cover a running job.
    assert int(service["stop_grace_period"].removesuffix("s")) > WorkerSettings().job_timeout


def test_the_health_check_probes_the_ops_endpoint_after_a_first_model_load() -> None:
    env = image_env()
    assert env["TOONIFY_OPS_HOST"] == "0.0.0.0"
    check = dict(final_stage())["HEALTHCHECK"]
    assert f"127.0.0.1:{env['TOONIFY_OPS_PORT']}/healthz" in check
    # The first start downloads face-alignment's weights and blends every strength.
    start_period = re.search(r"--start-period=(\d+)m", check)
    assert start_period and int(start_period[1]) >= 10


def test_compose_scales_out_with_redis_postgres_and_workers_that_run_the_worker_command() -> None:
    services = compose()["services"]
    worker = services["worker"]
    assert worker["command"] == "worker"
    assert "ports" not in worker  # `--scale worker=N` on one host: no port to collide on
    assert "container_name" not in worker
    assert worker["volumes"] == services["toonify"]["volumes"]
    assert int(worker["stop_grace_period"].removesuffix("s")) > WorkerSettings().job_timeout
    assert {"worker", "redis", "postgres"} <= set(services)
    # The privacy default: Redis writes nothing of the photos it carries to disk.
    assert services["redis"]["command"][1:] == ["--save", "", "--appendonly", "no"]
    assert all(services[name]["profiles"] == ["scale"] for name in ("worker", "redis", "postgres"))
