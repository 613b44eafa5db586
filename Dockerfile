# One image for web, worker, beat and flower (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# The service's own dependencies only: no test runner, browser driver or docker client.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

COPY . .
# collectstatic reads the production settings, which refuse to start without a real key: this
# throwaway one lives only for this step.
RUN SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" DEBUG=false \
    python manage.py collectstatic --noinput \
    && useradd --create-home --uid 1000 app && mkdir -p /app/var /app/metrics \
    && chown -R app /app/var /app/metrics
USER app

EXPOSE 8000
CMD ["gunicorn", "config.wsgi", "--config", "config/gunicorn.py", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-"]
