# Build stage: a wheel of the project and its runtime dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md config.yaml ./
COPY proxy ./proxy
COPY selector_model ./selector_model
COPY training ./training
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: no compiler, no sources, a non-root user.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 autoroute
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config.yaml /etc/autoroute/config.yaml
USER autoroute
WORKDIR /home/autoroute
ENV AUTOROUTE_CONFIG=/etc/autoroute/config.yaml \
    AUTOROUTE_LISTEN__HOST=0.0.0.0
EXPOSE 11435
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:11435/api/autoroute/health', timeout=2)"
ENTRYPOINT ["autoroute"]
CMD ["serve"]
