# toonify-bot on one NVIDIA GPU: docker run --gpus all -v toonify-models:/models -v toonify-data:/data \
#   -e TOONIFY_TELEGRAM_ENABLED=true -e TOONIFY_TELEGRAM_TOKEN=... toonify-bot
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv curl libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 toonify
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bots ./bots
COPY inference ./inference
COPY storage ./storage
COPY config.example.toml ./
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cu128 torch \
    && /opt/venv/bin/pip install .

ENV PATH=/opt/venv/bin:$PATH \
    TOONIFY_MODELS_DIR=/models \
    TOONIFY_STORAGE_URL=sqlite+aiosqlite:////data/toonify.db \
    TOONIFY_OPS_HOST=0.0.0.0 \
    TOONIFY_OPS_PORT=9090 \
    TORCH_HOME=/models/torch
RUN mkdir -p /models /data && chown toonify:toonify /models /data
VOLUME ["/models", "/data"]
USER toonify
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9090/healthz || exit 1
ENTRYPOINT ["toonify"]
CMD ["run"]
