# leadpulse image: one image, the component is the command (worker, sink, collector, notifier, migrate, ...).
#   docker build -t leadpulse .
#   docker run --rm leadpulse worker
# Build stage makes wheels (ours and every dependency) so the runtime stage needs no compiler and no cache.
FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY leadpulse ./leadpulse
COPY streams ./streams
COPY schemas ./schemas
COPY agents ./agents
COPY sinks ./sinks
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LEADPULSE_DATA_DIR=/var/lib/leadpulse \
    LEADPULSE_WEB_HOST=0.0.0.0
RUN groupadd --system --gid 10001 leadpulse \
    && useradd --system --uid 10001 --gid leadpulse --home-dir /var/lib/leadpulse --create-home leadpulse
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels pip install /wheels/*.whl
USER 10001:10001
WORKDIR /var/lib/leadpulse
# worker (ops), sink (ops + read-only query API), collector (HTTP ingestion + ops), notifier (ops)
EXPOSE 6066 6067 8088 6068
ENTRYPOINT ["leadpulse"]
CMD ["--help"]
