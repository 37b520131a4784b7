# toonify-bot on one NVIDIA GPU: `docker compose up` with compose.yaml (README, Docker).
#
# PyTorch's CUDA wheels bring CUDA and cuDNN as pip packages (nvidia-*), so the base is a slim
# Python image, not a CUDA one: the host's NVIDIA Container Toolkit adds the driver at run time.
# TORCH_BUILD picks the wheel: cu130 (default) runs on compute capability 7.5 to 12.0 (T4, A100,
# A10, L4, L40S, H100, H200, B200, RTX 20 to 50 series) with an NVIDIA driver >= 580; cu126 runs
# on 5.0 to 9.0 (adds V100, P100, P40; no Blackwell) with a driver >= 525; cpu needs no GPU.
ARG PYTHON=3.11

# The project as a wheel, built apart so that a code change rebuilds only the last layers.
FROM python:${PYTHON}-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bots ./bots
COPY inference ./inference
COPY storage ./storage
COPY bench ./bench
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:${PYTHON}-slim-bookworm
ARG TORCH_BUILD=cu130
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# OpenCV (face-alignment's dependency) needs libGL and GLib even without a display. Versions
# are the release's (bookworm only gets security fixes): pinning them would break the build
# whenever a fix replaces one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Slowest-changing first: PyTorch pinned as in scripts/setup, then the other dependencies as
# pyproject.toml lists them (torch stays the one installed above), then the project itself.
RUN pip install --no-cache-dir "torch==2.13.0" \
    --index-url "https://download.pytorch.org/whl/${TORCH_BUILD}"
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; deps = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']; print(*deps, sep='\n')" > /tmp/requirements.txt \
    && pip install --no-cache-dir "torch==2.13.0" -r /tmp/requirements.txt \
    && rm /tmp/pyproject.toml /tmp/requirements.txt
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels

RUN useradd --create-home --uid 10001 toonify \
    && mkdir -p /models /data \
    && chown toonify:toonify /models /data
# The environment wins over config.toml: models and the database on the volumes, the ops
# endpoint reachable from outside the container, face-alignment's weights with the models.
ENV TOONIFY_MODELS_DIR=/models \
    TOONIFY_STORAGE_URL=sqlite+aiosqlite:////data/toonify.db \
    TOONIFY_OPS_HOST=0.0.0.0 \
    TOONIFY_OPS_PORT=9090 \
    TORCH_HOME=/models/torch
VOLUME ["/models", "/data"]
# config.toml is read from here when mounted (compose.yaml does).
WORKDIR /app
USER 10001
# 9090: /healthz and /metrics; 8443: Telegram's webhook (telegram.webhook_port) in webhook mode.
EXPOSE 9090 8443
# The first start downloads face-alignment's weights (~190 MB), blends every strength and
# times one inversion step; /healthz answers only once the models are loaded.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=4)"]
ENTRYPOINT ["toonify"]
CMD ["run"]
