# bkp in a container: restic, the OpenSSH client and bkp, installed by the same script as
# the README and CI use. Policies, secrets and state are volumes:
#   docker run --rm -v /etc/bkp:/etc/bkp:ro -v /var/lib/bkp:/var/lib/bkp \
#              -v /srv/tenants:/srv/tenants:ro bkp run
# On Kubernetes (runbooks/kubernetes.md) the same image runs one tenant per job, as uid
# 10001 with a read-only root file system: `bkp schedule --format kubernetes` renders the
# CronJobs, which mount BKP_HOME, the policy, the Secret files and the sources themselves.
FROM debian:12-slim

ENV DEBIAN_FRONTEND=noninteractive \
    BKP_POLICIES=/etc/bkp/policies \
    BKP_HOME=/var/lib/bkp \
    PATH=/opt/bkp/.venv/bin:$PATH

COPY . /opt/bkp
WORKDIR /opt/bkp
RUN scripts/install.sh \
 && rm -rf /var/lib/apt/lists/* /root/.cache \
 && useradd --system --uid 10001 --home-dir /var/lib/bkp --shell /usr/sbin/nologin bkp \
 && mkdir -p /var/lib/bkp /etc/bkp/policies \
 && chown bkp:bkp /var/lib/bkp && chmod 700 /var/lib/bkp

# Backups and restores run as an unprivileged user; reading every tenant's files, or
# sanitizing block devices, needs `--user root` (and --privileged with the device) explicitly.
USER bkp
VOLUME ["/etc/bkp", "/var/lib/bkp"]
ENTRYPOINT ["bkp"]
CMD ["status"]
