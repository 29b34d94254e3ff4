# digits: the service with the shipped model. Build: docker build -t digits .
# Run: docker run -p 8000:8000 digits   (then open http://localhost:8000)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DIGITS_WEIGHTS_DIR=/app/weights \
    DIGITS_STATIC_DIR=/app/static \
    DIGITS_DATA_DIR=/data/mnist

RUN useradd --create-home --uid 10001 digits
WORKDIR /app

# Dependencies first, so code changes reuse the cached layer.
COPY pyproject.toml README.md ./
COPY app/__init__.py app/__init__.py
COPY model/__init__.py model/__init__.py
RUN pip install . && pip uninstall -y digits

COPY app app
COPY model model
RUN pip install --no-deps .
COPY static static
COPY --chown=digits:digits weights weights
RUN mkdir -p /data/mnist && chown -R digits:digits /data

USER digits
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["digits", "serve", "--host", "0.0.0.0", "--port", "8000"]
