# arca in a container: DICOMweb on 8042, DIMSE on 11112, data (SQLite index + hot tier) in /data.
#   docker build -t arca .
#   docker run -p 8042:8042 -p 11112:11112 -v arca-data:/data arca
# Extra options go after the image name, e.g. `... arca serve --http-host 0.0.0.0
# --dimse-host 0.0.0.0 --data /data --remote-ae MODALITY=10.0.0.7:104`, or as ARCA_* variables.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Pinned dependencies first: this layer is rebuilt only when the lock file changes.
COPY requirements.lock ./
RUN pip install -r requirements.lock

COPY pyproject.toml README.md ./
COPY server/ server/
COPY dicomweb/ dicomweb/
COPY dimse/ dimse/
COPY storage/ storage/
COPY transcoding/ transcoding/
COPY conformance/ conformance/
COPY config/ config/
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /data arca \
    && mkdir -p /data \
    && chown arca /data

USER arca
VOLUME ["/data"]
EXPOSE 8042 11112

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8042/health', timeout=4)"

# exec form: arca is PID 1 and gets SIGTERM directly (graceful shutdown).
ENTRYPOINT ["arca"]
CMD ["serve", "--http-host", "0.0.0.0", "--dimse-host", "0.0.0.0", "--data", "/data"]
