# relay: a Twilio ConversationRelay phone agent. Slim, non-root, runs `relay serve`.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY relay ./relay
COPY knowledge ./knowledge
# constraints.txt: the exact versions the test suite ran with (pip freeze of the dev venv).
# [postgres]: the asyncpg driver, for DATABASE_URL=postgresql://... (README §8, Scale out).
RUN python -m venv /opt/relay && /opt/relay/bin/pip install --quiet -c constraints.txt .[postgres]

FROM python:3.11-slim
ENV PATH=/opt/relay/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RELAY_DATA_DIR=/var/lib/relay \
    RELAY_PROMPTS_DIR=/app/prompts \
    RELAY_LOG_FORMAT=json \
    XDG_CACHE_HOME=/var/lib/relay/cache \
    ANONYMIZED_TELEMETRY=False
RUN useradd --system --uid 10001 --home-dir /app relay \
    && mkdir -p /var/lib/relay /app \
    && chown relay:relay /var/lib/relay
COPY --from=build /opt/relay /opt/relay
WORKDIR /app
COPY --chown=relay:relay prompts ./prompts
COPY --chown=relay:relay data /var/lib/relay
USER relay
EXPOSE 8080
VOLUME ["/var/lib/relay"]
# Liveness: /healthz (the event loop answers). Readiness for the load balancer: /readyz (503 while
# draining or warming up; 200 "degraded" while a shared dependency is down). SIGTERM drains live calls for up to RELAY_DRAIN_SECONDS
# (120): give the container longer than that to stop (docker stop -t 150, stop_grace_period: 150s,
# terminationGracePeriodSeconds: 150).
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz').status == 200 else 1)"
STOPSIGNAL SIGTERM
CMD ["relay", "serve", "--host", "0.0.0.0", "--port", "8080"]
