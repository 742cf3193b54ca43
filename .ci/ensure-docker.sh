#!/usr/bin/env bash
# Make sure a Docker engine answers `docker info`: use a running one, otherwise install Debian's
# docker.io and start dockerd as root (machines here start with only the docker client).
set -euo pipefail

log() { echo "[ensure-docker] $*"; }

if docker info >/dev/null 2>&1; then
    log "a Docker engine is already answering; using it"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    log "no Docker engine answers and we are not root: start one yourself (dockerd) and retry" >&2
    exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
    log "installing docker.io (dockerd, containerd, runc) from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null
fi

data_root="${ANYCODE_DOCKERD_ROOT:-/var/lib/anycode-dockerd}"
mkdir -p "$data_root"
log "starting dockerd (data root $data_root, log /tmp/anycode-dockerd.log)"
nohup dockerd --data-root "$data_root" >/tmp/anycode-dockerd.log 2>&1 &

for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        log "dockerd answers: $(docker info --format '{{.ServerVersion}} / {{.Driver}}')"
        exit 0
    fi
    sleep 1
done
log "dockerd did not answer within 60 s; last lines of its log:" >&2
tail -n 30 /tmp/anycode-dockerd.log >&2
exit 1
