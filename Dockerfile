# persona-bot orchestrator: every bot of /config/bots.yaml in one supervised process.
#
#   docker build -t persona-orchestrator .
#   docker run -d --name personas --stop-timeout 30 \
#     -v "$PWD/config:/config:ro" -v personas-data:/data persona-orchestrator
#
# /config holds bots.yaml and .env (mounted, never baked in); /data holds the SQLite memory
# (set `database: /data/orchestrator.sqlite3` in bots.yaml). See README.md, "Docker".
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The exact versions of requirements/runtime.txt, hashes checked (scripts/lock refreshes it), in a
# layer of their own that a code change leaves cached; then the project, built by the pinned backend.
COPY requirements/runtime.txt ./requirements/
RUN pip install --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
RUN pip install --no-deps --no-build-isolation . \
    && pip check \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin orchestrator \
    && mkdir -p /config /data \
    && chown orchestrator:orchestrator /data

USER orchestrator
WORKDIR /data

# /healthz answers 200 while a bot is online, 503 while none is (failed, or Discord unreachable) or it stops; no curl needed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

# Exec form: orchestrator is PID 1 and gets SIGTERM from `docker stop` (it finishes the answers
# in flight, then exits 0; give it --stop-timeout 30). SIGHUP reloads bots.yaml.
# /healthz and /metrics listen on 127.0.0.1 only; add "--health-host", "0.0.0.0" and publish
# 8080 to let Prometheus scrape /metrics from outside the container.
CMD ["orchestrator", "run", "/config/bots.yaml", "--health-port", "8080"]
