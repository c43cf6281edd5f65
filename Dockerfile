# Image for the demo services: `choreo run services.<name>:service`.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 CHOREO_DEMO_DATA=/data
COPY pyproject.toml README.md ./
COPY choreo ./choreo
RUN pip install ".[metrics,fast,sql]"
COPY services ./services
VOLUME /data
CMD ["choreo", "--help"]
