# Prometheus from Debian's packages for the offline proof, shaped like prom/prometheus where
# compose relies on it: entrypoint the prometheus binary (compose passes only flags), config at
# /etc/prometheus (compose mounts prometheus.yml and rules/ there), data in /prometheus owned by
# nobody, wget for the healthcheck, promtool beside it.
ARG BASE_IMAGE=ftshop-local/debian:trixie
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o nobody -g nogroup /prometheus
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
