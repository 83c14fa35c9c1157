# syntax=docker/dockerfile:1
# The payportal image: the front door, the shards and the Ray head all run from it, so every
# Ray worker can import the same payportal code. Runtime only; no dev extras.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid, so files it writes to a mounted volume have a predictable owner.
RUN groupadd --system --gid 10001 payportal \
 && useradd --system --uid 10001 --gid payportal --home-dir /app --shell /usr/sbin/nologin payportal

# Dependencies first, from pyproject.toml alone, so editing the code does not reinstall Ray.
WORKDIR /src
COPY pyproject.toml README.md ./
RUN mkdir payportal && touch payportal/__init__.py \
 && pip install . \
 && pip uninstall --yes payportal \
 && rm -rf payportal build

COPY payportal ./payportal
RUN pip install --no-deps . && rm -rf /src

# Runs from an empty directory: var/ (the embedded SQLite and the generated secret key)
# lives here and is the volume to keep; no source tree can shadow the installed package.
WORKDIR /app
RUN mkdir -p /app/var && chown -R payportal:payportal /app && chmod 700 /app/var
USER payportal

# Front door, sandbox processor, mail catcher inbox.
EXPOSE 8080 8081 8025

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PAYPORTAL_PORT', '8080') + '/healthz', timeout=3)"]

CMD ["payportal", "serve"]
