# The base is any image with Python 3.11+ and its venv module at `python3`:
# python:3.11-slim by default; scripts/docker-check builds one from Debian packages
# where no registry image can be pulled (BASE=localhost/autoroute-base:bookworm).
ARG BASE=python:3.11-slim

# Build stage: wheels of the project and its runtime dependencies.
FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md config.yaml ./
COPY proxy ./proxy
COPY selector_model ./selector_model
COPY training ./training
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --upgrade pip setuptools wheel \
    && /opt/build/bin/pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: a virtualenv (Debian's own python3 refuses system-wide pip installs),
# no compiler, no sources, a non-root user.
FROM ${BASE}
ENV PATH=/opt/autoroute/bin:$PATH
COPY --from=build /wheels /wheels
RUN python3 -m venv /opt/autoroute \
    && /opt/autoroute/bin/pip install --no-cache-dir --no-index /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 --user-group autoroute \
    && mkdir -p /var/lib/autoroute \
    && chown autoroute:autoroute /var/lib/autoroute
COPY config.yaml /etc/autoroute/config.yaml
# Usage events, the usage spool and measured profiles live under
# $XDG_STATE_HOME/autoroute (proxy/state_dir.py): a volume keeps them
# across container restarts.
ENV AUTOROUTE_CONFIG=/etc/autoroute/config.yaml \
    AUTOROUTE_LISTEN__HOST=0.0.0.0 \
    XDG_STATE_HOME=/var/lib/autoroute
VOLUME ["/var/lib/autoroute"]
USER 10001:10001
WORKDIR /home/autoroute
EXPOSE 11435
# Healthy means ready: /api/autoroute/ready answers 503 while no backend is usable.
# Asked where the proxy listens, read as it reads it (the config file, then AUTOROUTE_*).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; from proxy.config_loading import load; at = load().listen; host = '127.0.0.1' if at.host in ('0.0.0.0', '::', '') else at.host; host = '[%s]' % host if ':' in host else host; urllib.request.urlopen('http://%s:%d/api/autoroute/ready' % (host, at.port), timeout=2)"]
ENTRYPOINT ["autoroute"]
CMD ["serve"]
