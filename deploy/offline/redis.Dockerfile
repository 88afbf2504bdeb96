# Redis from Debian's packages for the offline proof. Like the official redis image, a
# `redis-server` command runs with protected mode off (compose reaches it from other
# containers, without a password, on its private network); redis-cli is there for the
# healthcheck.
ARG BASE_IMAGE=ftshop-local/debian:trixie
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o redis -g redis /data
COPY redis-entrypoint.sh /usr/local/bin/redis-entrypoint.sh
# The user the Debian package created (its uid is not fixed).
# hadolint ignore=DL3066
USER redis
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-entrypoint.sh"]
CMD ["redis-server"]
