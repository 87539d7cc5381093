# vLLM's OpenAI server with sinkwatch's plugin installed (entry point group vllm.general_plugins).
# vLLM brings torch, numpy and pyzmq; the plugin is installed without the gateway's dependencies.
# Build from the repository root: docker build -f deploy/docker/vllm.Dockerfile .
ARG VLLM_VERSION=v0.32.0
FROM vllm/vllm-openai:${VLLM_VERSION}
COPY pyproject.toml README.md /opt/sinkwatch/
COPY gateway /opt/sinkwatch/gateway
COPY monitors /opt/sinkwatch/monitors
RUN pip install --no-cache-dir --no-deps /opt/sinkwatch
EXPOSE 8000
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
