# ledgergate ext_proc server image (used by docker-compose.yml and deploy/k8s).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ext_proc ./ext_proc
COPY policies ./policies
COPY envoy ./envoy
# With the tracing extra, so `tracing.enabled: true` works in the image (off by default).
# xds-protos ships an older opentelemetry/proto that can shadow opentelemetry-proto's (see Makefile).
RUN pip install --no-cache-dir ".[tracing]" \
 && pip install --no-cache-dir --force-reinstall --no-deps \
      "opentelemetry-proto==$(python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')" \
 && groupadd --system --gid 10001 ledgergate \
 && useradd --system --uid 10001 --gid 10001 ledgergate \
 && mkdir -p /app/var && chown 10001:10001 /app/var
# A named volume mounted on /app/var starts with this directory's owner (docker-compose.yml's
# init service also hands everything it generates to 10001:10001).
USER 10001:10001
EXPOSE 50051 9464
ENTRYPOINT ["ledgergate"]
CMD ["serve", "--config", "/etc/ledgergate/ledgergate.yaml"]
