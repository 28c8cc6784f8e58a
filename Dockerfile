# llmsim in a container: the simulator, the Locust toolkit and the bundled locustfiles.
#
#   docker build -t llmsim .
#   docker run --rm -p 8080:8080 llmsim                       # llmsim serve, one worker per core
#   docker run --rm llmsim locust -f /app/locustfiles/chat.py --help
#
# Stage 1 builds wheels of llmsim and every dependency; stage 2 installs them,
# offline, into a slim image that runs as an unprivileged user.
# See docs/scaling.md (Docker, compose, Kubernetes).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY llmsim ./llmsim
COPY profiles ./profiles
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LLMSIM_PORT=8080
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels /wheels/llmsim-*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin llmsim
WORKDIR /app
COPY locustfiles ./locustfiles
USER 10001
EXPOSE 8080
# urllib, not curl: the slim image has no curl. Follows LLMSIM_PORT.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('LLMSIM_PORT', '8080'), timeout=2)"]
CMD ["llmsim", "serve", "--host", "0.0.0.0", "--workers", "auto"]
