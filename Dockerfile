# The image every backfill service runs: migrate (alembic), worker and scheduler.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md alembic.ini ./
COPY backfill ./backfill
COPY workers ./workers
COPY example_app ./example_app
COPY migrations ./migrations
RUN pip install .
# Workers import the user's definitions module (BACKFILL_APP) from the working directory.
CMD ["backfill", "--help"]
