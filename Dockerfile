# One image for every durable process: workers, Flower, the dashboard,
# migrations and the example web app (docker-compose.yml picks the command).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

WORKDIR /app

# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml README.md ./
COPY durable/ durable/
RUN pip install ".[flower,dashboard]"

# workers/, config/ and examples/ are imported from /app (PYTHONPATH).
COPY config/ config/
COPY workers/ workers/
COPY examples/ examples/
# Compiled now: the processes run as a user who cannot write __pycache__
# here, and would compile these modules again at every start.
RUN python -m compileall -q config workers examples

RUN useradd --create-home --uid 1000 durable
ENV DURABLE_HOME=/home/durable/.durable
USER durable

CMD ["durable", "worker", "-A", "workers.app", "--loglevel=INFO"]
