# syntax=docker/dockerfile:1

# ---- stage 1: build the wheel and a virtualenv with its dependencies ----
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot/ bot/
COPY intents/ intents/
COPY handlers/ handlers/
COPY knowledge/ knowledge/

RUN pip wheel --no-deps -w /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install /wheels/*.whl

# ---- stage 2: runtime ----
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    SUPPORTBOT_WEB__HOST=0.0.0.0 \
    SUPPORTBOT_DATABASE__URL=sqlite:////data/supportbot.db

COPY --from=builder /opt/venv /opt/venv

RUN groupadd --system --gid 10001 supportbot \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin supportbot \
 && mkdir -p /data \
 && chown supportbot:supportbot /data

WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

USER supportbot
ENTRYPOINT ["supportbot"]
CMD ["serve"]
