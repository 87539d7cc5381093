# The sinkwatch gateway (`sinkwatch serve`), with the embedded default model converted into the image so
# that the embedded backend (and the openai backend's optional reader) starts without a download.
# Build from the repository root: docker build -f deploy/docker/gateway.Dockerfile .
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 SINKWATCH_CACHE_DIR=/opt/sinkwatch-cache
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY monitors ./monitors
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu .
RUN sinkwatch fetch
ENV HF_HUB_OFFLINE=1 HOME=/tmp SINKWATCH_HOST=0.0.0.0 SINKWATCH_PORT=8000
EXPOSE 8000
USER 65534:65534
CMD ["sinkwatch", "serve"]
