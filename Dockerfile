# The tickflow worker. Build: docker build -t tickflow .   Run: see docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
# Faust keeps its table data under F_DATADIR; the app folder is read-only for the worker's user.
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 F_DATADIR=/var/lib/tickflow
COPY pyproject.toml constraints.txt README.md ./
COPY streams ./streams
COPY producers ./producers
COPY sinks ./sinks
COPY topics.yaml ./
RUN pip install --no-cache-dir -c constraints.txt . && useradd --system --uid 10001 tickflow \
    && mkdir -p /var/lib/tickflow && chown tickflow /var/lib/tickflow
USER tickflow
EXPOSE 6066
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=4 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:6066/health', timeout=4)"
# Other workers reach this one by its container hostname (table-routed HTTP requests).
CMD ["sh", "-c", "TICKFLOW_WORKER__ADVERTISED_HOST=${TICKFLOW_WORKER__ADVERTISED_HOST:-$(hostname)} exec python -m streams worker -l info"]
