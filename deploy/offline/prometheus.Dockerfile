# Prometheus from Debian's packages for the offline proof, shaped like prom/prometheus where
# compose relies on it: entrypoint the prometheus binary (compose passes only flags), config at
# /etc/prometheus (compose mounts prometheus.yml and rules/ there), data in /prometheus owned by
# nobody, wget for the healthcheck, promtool beside it.
# Prometheus 3, as compose's prom/prometheus:v3.x: trixie packages 2.53, so prometheus (and its
# promtool) come from the next Debian release (PROMETHEUS_SUITE, pinned below trixie for
# everything else); both depend on libc only. Rule evaluation differs between 2 and 3 (range
# windows are left-open in 3), so the proof runs what compose ships. `check-valid-until=no`
# on that one source: the mirror this machine uses may be a dated snapshot whose Release file of
# a moving suite has expired; the signature is still checked.
ARG BASE_IMAGE=ftshop-local/debian:trixie
FROM ${BASE_IMAGE}
ARG PROMETHEUS_SUITE=forky
# DL4006: the pipe only picks the first mirror line; if it fails, the mirror falls back below.
# hadolint ignore=DL3008,DL4006
RUN mirror=$(sed -n 's/^deb \([^ ]*\) [a-z]* main$/\1/p' /etc/apt/sources.list | head -n 1) \
    && echo "deb [check-valid-until=no] ${mirror:-http://deb.debian.org/debian} ${PROMETHEUS_SUITE} main" >/etc/apt/sources.list.d/prometheus-suite.list \
    && printf 'Package: *\nPin: release n=%s\nPin-Priority: 100\n' "${PROMETHEUS_SUITE}" >/etc/apt/preferences.d/prometheus-suite \
    && apt-get update \
    && apt-get install -y --no-install-recommends "prometheus/${PROMETHEUS_SUITE}" "promtool/${PROMETHEUS_SUITE}" \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o nobody -g nogroup /prometheus
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
