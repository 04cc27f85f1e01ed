FROM python:3.11-slim
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
