# syntax=docker/dockerfile:1
# The example trainers' image (docker-compose.yml): bash, curl, python3 and numpy for
# examples/bash/trainer.sh, which compose mounts read-only at /examples. Nothing is copied in.
FROM python:3.11-slim-bookworm
# Not pinned: bookworm's archive keeps only the current curl (security updates replace it), so a
# pinned version stops building; the base image tag fixes the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN pip install numpy==2.4.6 \
    && useradd --uid 10001 --create-home --shell /bin/bash trainer
USER 10001
WORKDIR /home/trainer
CMD ["bash", "/examples/trainer.sh"]
