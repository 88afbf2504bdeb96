# Alertmanager from Debian's packages for the offline proof, shaped like prom/alertmanager
# where compose relies on it: the binary at /bin/alertmanager (compose's command execs it by
# that path after writing the Slack webhook file), data in /alertmanager owned by nobody, a
# POSIX shell and wget for the healthcheck.
ARG BASE_IMAGE=ftshop-local/debian:trixie
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus-alertmanager wget \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s prometheus-alertmanager /usr/bin/alertmanager \
    && install -d -o nobody -g nogroup /alertmanager
USER 65534:65534
WORKDIR /alertmanager
EXPOSE 9093
ENTRYPOINT ["/usr/bin/alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
