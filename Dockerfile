# The ticket-rag API. Weaviate runs in its own container (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml constraints.txt ./
COPY server.py ./
COPY chains ./chains
COPY prompts ./prompts
COPY ticket_rag ./ticket_rag
RUN pip install --no-cache-dir -c constraints.txt -e . \
    && useradd --create-home --uid 10001 app \
    && mkdir -p /models /app/data && chown app /models /app/data

USER app
EXPOSE 8000
# Fetch and verify the weights (first start only, into the /models volume), then serve.
CMD ["sh", "-c", "ticket-rag setup && exec ticket-rag serve"]
