FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY protocols protocols
COPY registry registry
COPY agents agents
COPY schemas schemas
RUN pip install --no-cache-dir '.[redis]' && useradd --system interlace
USER interlace
EXPOSE 8080
CMD ["interlace", "serve", "--host", "0.0.0.0"]
