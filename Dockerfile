# syntax=docker/dockerfile:1
# margin's gateway. Build:   docker build -t margin .
# With the bundled local models (llama.cpp, MiniLM; a much larger image):
#                            docker build --build-arg EXTRAS=local -t margin:local .
ARG PYTHON_VERSION=3.11

# -- build: a virtual environment with margin and its dependencies --------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/margin
ENV PATH=/opt/margin/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".${EXTRAS:+[$EXTRAS]}"

# -- runtime: the environment only, run as an unprivileged user -----------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 margin \
 && useradd --system --uid 10001 --gid margin --home-dir /var/lib/margin --create-home margin
COPY --from=build /opt/margin /opt/margin
ENV PATH=/opt/margin/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MARGIN_CONFIG=/etc/margin/margin.yaml
# The ledger's journal and spool live here: mount a volume that outlives the process.
WORKDIR /var/lib/margin
VOLUME ["/var/lib/margin"]
USER 10001:10001
EXPOSE 8000
# SIGTERM drains (see docs/deploy.md); give it server.drain_delay_s + drain_grace_s.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz/live', timeout=2).status != 200)"]
ENTRYPOINT ["margin", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8000"]
