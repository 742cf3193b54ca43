#!/usr/bin/env bash
# Build the anycode sandbox image (docker/Dockerfile.agent) on a machine with no image registry.
#
# Usage:  docker/build-image.sh [--force] [--base-only]
#
#   --force       rebuild even when an image with the same build hash exists
#   --base-only   only make sure the base image exists (debootstrap + docker import)
#
# Environment (all optional):
#   IMAGE          tag of the result                       (default anycode-sandbox:latest)
#   BASE           base image for FROM; used when it is present locally or can be pulled,
#                  otherwise the local Debian base below is built and used instead.
#                  Unset: the local Debian base (or node:22-bookworm-slim where debootstrap is missing)
#   LOCAL_BASE     tag of the local debootstrap base       (default anycode-base:bookworm)
#   DEBIAN_SUITE   suite for debootstrap                   (default bookworm)
#   DEBIAN_MIRROR  mirror for debootstrap; default: taken from this host's apt sources
#   BUILD_CA_FILE  CA bundle the build trusts for HTTPS (npm, downloads); it is put into the
#                  build context (docker/.build/, gitignored) and only a discarded build stage
#                  sees it.  Default /etc/ssl/certs/ca-certificates.crt when present; "" = none
#   VERBOSE=1      show the full docker build output (otherwise: steps only, full log in
#                  docker/.build/build-image.log)
#   NPM_REGISTRY   npm registry the build installs Node and the agents from
#                  (default: what this host's `npm config get registry` answers, when npm is
#                  installed; otherwise the registry the base image's npm is configured with)
#   Build arguments passed through when set: INSTALL_GOOSE GOOSE_URL NODE_MIN_VERSION NPM_VERSION
#     NPM_REGISTRY AGENT_UID AGENT_SUDO
#   <NAME>_VERSION  overrides one version of anycode_actors/agents/stack.txt for this build
#                  (NODE_VERSION, SANDBOX_AGENT_VERSION, CLAUDE_CODE_VERSION, CLAUDE_AGENT_ACP_VERSION,
#                  ACPX_VERSION, CODEX_VERSION, CODEX_ACP_VERSION)
#
# The versions of Node and of the agent stack come from anycode_actors/agents/stack.txt, the one
# place they are written; a version the npm registry does not have stops the build with its name.
#
# The image is labelled anycode.build-hash=<sha256 of Dockerfile, entrypoint, base image id and
# build args>; when an image with that label exists it is reused (tagged $IMAGE) and nothing is
# built, so each tag is rebuilt only when what it would be built from changed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
scratch="$here/.build"
started=$(date +%s)

log() { echo "[build-image] [$(($(date +%s) - started)) s] $*"; }
die() {
    echo "[build-image] ERROR: $*" >&2
    exit 1
}

force=0
base_only=0
for arg in "$@"; do
    case "$arg" in
    --force) force=1 ;;
    --base-only) base_only=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument: $arg (try --help)" ;;
    esac
done

IMAGE="${IMAGE:-anycode-sandbox:latest}"
LOCAL_BASE="${LOCAL_BASE:-anycode-base:bookworm}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
BUILD_CA_FILE="${BUILD_CA_FILE-/etc/ssl/certs/ca-certificates.crt}"
PASSTHROUGH_ARGS=(INSTALL_GOOSE GOOSE_URL NODE_MIN_VERSION NPM_VERSION NPM_REGISTRY AGENT_UID
    AGENT_SUDO)
STACK_FILE="$here/../anycode_actors/agents/stack.txt"

# --- The pinned stack: NAME PACKAGE VERSION per line; <NAME>_VERSION in the environment wins. ---
[ -r "$STACK_FILE" ] || die "the version file $STACK_FILE is missing"
node_version=""
agent_packages=()
while read -r name package version rest; do
    case "$name" in "" | "#"*) continue ;; esac
    [[ -n "$version" && -z "$rest" && "$name" =~ ^[A-Z][A-Z0-9_]*$ ]] ||
        die "$STACK_FILE: a line must be NAME PACKAGE VERSION, not: $name $package $version $rest"
    override="${name}_VERSION"
    version="${!override:-$version}"
    if [ "$name" = NODE ]; then
        node_version="$version"
    else
        agent_packages+=("$package@$version")
    fi
done <"$STACK_FILE"
[ -n "$node_version" ] || die "$STACK_FILE has no NODE line"
[ "${#agent_packages[@]}" -gt 0 ] || die "$STACK_FILE names no package"

# One build at a time (the CA file in the context and the base image are shared).
mkdir -p "$scratch"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$scratch/lock"
    if ! flock -n 9; then
        log "another build-image.sh is running; waiting for it"
        flock 9
    fi
fi

docker info >/dev/null 2>&1 || die "no Docker engine answers 'docker info' (start one, e.g. .ci/ensure-docker.sh)"

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# --- The host's apt sources: "URI SUITE" for every enabled deb entry with component main. ------
host_apt_sources() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk 'BEGIN { RS = ""; FS = "\n" }
        {
            types = ""; uris = ""; suites = ""; comps = ""; enabled = "yes"
            for (i = 1; i <= NF; i++) {
                line = $i
                if (line ~ /^[ \t]*#/) continue
                key = line; sub(/:.*/, "", key); key = tolower(key)
                val = line; sub(/^[^:]*:[ \t]*/, "", val)
                if (key == "types") types = val
                else if (key == "uris") uris = val
                else if (key == "suites") suites = val
                else if (key == "components") comps = val
                else if (key == "enabled") enabled = tolower(val)
            }
            if (enabled == "no" || (" " types " ") !~ / deb / || (" " comps " ") !~ / main /) next
            nu = split(uris, u, /[ \t]+/); ns = split(suites, s, /[ \t]+/)
            for (a = 1; a <= nu; a++) for (b = 1; b <= ns; b++) if (u[a] != "" && s[b] != "") print u[a], s[b]
        }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [options] URI SUITE COMPONENTS...
        sed -E -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" |
            awk '$1 == "deb" { for (i = 4; i <= NF; i++) if ($i == "main") { print $2, $3; break } }'
    done
}

# --- The local Debian base: debootstrap + docker import. -----------------------------------
build_local_base() {
    if image_exists "$LOCAL_BASE"; then
        log "base image $LOCAL_BASE exists; reusing it"
        return
    fi
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (apt-get install debootstrap), or set BASE to a base image you have"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root; run as root or set BASE to a base image you have"

    local sources mirror
    sources="$(host_apt_sources | awk '!seen[$0]++')"
    mirror="${DEBIAN_MIRROR:-$(awk -v s="$DEBIAN_SUITE" '$2 == s { print $1; exit }' <<<"$sources")}"
    [ -n "$mirror" ] || die "no apt source for suite '$DEBIAN_SUITE' in this host's /etc/apt sources; set DEBIAN_MIRROR"

    local rootfs
    mkdir -p "$scratch"
    rootfs="$(mktemp -d "${TMPDIR:-/var/tmp}/anycode-rootfs.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$rootfs'" EXIT

    log "debootstrap --variant=minbase $DEBIAN_SUITE from $mirror (≈25 s; log $scratch/debootstrap.log)"
    if ! debootstrap --variant=minbase "$DEBIAN_SUITE" "$rootfs" "$mirror" >"$scratch/debootstrap.log" 2>&1; then
        tail -n 30 "$scratch/debootstrap.log" >&2
        die "debootstrap failed (full log: $scratch/debootstrap.log)"
    fi

    # apt inside the image uses the host's mirrors for the suite and its -updates/-security
    # companions (plain HTTP works from containers here; no CA needed for apt).
    {
        echo "# written by docker/build-image.sh from the build host's apt sources"
        awk -v s="$DEBIAN_SUITE" '$2 == s || $2 == s "-updates" || $2 == s "-security" { print "deb " $1 " " $2 " main" }' <<<"$sources"
        if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "deb $DEBIAN_MIRROR $DEBIAN_SUITE main"; fi
    } | awk '!seen[$0]++' >"$rootfs/etc/apt/sources.list"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* 2>/dev/null || true

    log "docker import → $LOCAL_BASE ($(du -sh "$rootfs" | cut -f1); ≈2 s)"
    tar -C "$rootfs" --numeric-owner -c . |
        docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["/bin/bash"]' \
            --message "debootstrap --variant=minbase $DEBIAN_SUITE $mirror" \
            - "$LOCAL_BASE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    log "base image $LOCAL_BASE ready"
}

# --- Which base. -------------------------------------------------------------------------------
if [ -n "${BASE:-}" ]; then
    if image_exists "$BASE"; then
        base="$BASE"
        log "base image $BASE is present locally"
    else
        log "base image $BASE is not present; trying docker pull (60 s limit)"
        if timeout 60 docker pull -q "$BASE" >/dev/null 2>&1; then
            base="$BASE"
        else
            log "could not pull $BASE (no registry?); using the local Debian base $LOCAL_BASE instead"
            build_local_base
            base="$LOCAL_BASE"
        fi
    fi
elif image_exists "$LOCAL_BASE" || command -v debootstrap >/dev/null 2>&1; then
    build_local_base
    base="$LOCAL_BASE"
else
    base="node:22-bookworm-slim"
    log "debootstrap is not installed; using BASE=$base (it will be pulled)"
fi
[ "$base_only" = 1 ] && exit 0

# --- Build arguments and the build hash. -------------------------------------------------------
# The npm registry is whatever this host's npm is configured with (a mirror, say), unless given.
if [ -z "${NPM_REGISTRY+x}" ] && command -v npm >/dev/null 2>&1; then
    NPM_REGISTRY="$(npm config get registry 2>/dev/null || true)"
    [ -n "$NPM_REGISTRY" ] || unset NPM_REGISTRY
fi
build_args=(--build-arg "BASE=$base" --build-arg "NODE_VERSION=$node_version"
    --build-arg "AGENT_PACKAGES=${agent_packages[*]}")
for name in "${PASSTHROUGH_ARGS[@]}"; do
    if [ -n "${!name+x}" ]; then
        build_args+=(--build-arg "$name=${!name}")
    fi
done
base_id="$(docker image inspect -f '{{.Id}}' "$base" 2>/dev/null || echo "$base")"
# The token gate in front of sandbox-agent is the daemon's own module (the local provider runs
# it too): one source, copied into the build context.
cp "$here/../anycode_actors/sandboxes/agent_gate.py" "$scratch/agent_gate.py"
hash="$(
    {
        for f in Dockerfile.agent entrypoint.sh .dockerignore .build/agent_gate.py; do
            echo "== $f"
            cat "$here/$f"
        done
        echo "== base $base_id"
        printf '%s\n' "${build_args[@]}"
    } | sha256sum | cut -c1-32
)"

# Remove the image that $IMAGE pointed to before, once no tag refers to it any more.
drop_replaced() {
    local old="$1"
    if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ] &&
        [ "$(docker image inspect -f '{{len .RepoTags}}' "$old" 2>/dev/null || echo 1)" = 0 ]; then
        if docker rmi "$old" >/dev/null 2>&1; then log "removed the image it replaced (${old:7:12})"; fi
    fi
}
previous_id="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"

if [ "$force" = 0 ]; then
    if [ "$(docker image inspect -f '{{index .Config.Labels "anycode.build-hash"}}' "$IMAGE" 2>/dev/null || true)" = "$hash" ]; then
        log "$IMAGE is up to date (build hash $hash); nothing to build"
        exit 0
    fi
    existing="$(docker image ls -q --filter "label=anycode.build-hash=$hash" | head -n 1)"
    if [ -n "$existing" ]; then
        docker tag "$existing" "$IMAGE"
        log "reusing image $existing (build hash $hash), tagged $IMAGE"
        drop_replaced "$previous_id"
        exit 0
    fi
fi

# --- Every pinned version must exist before minutes go into apt and npm (the image's own build
# checks again, against the registry it installs from; this is the early answer).
if command -v npm >/dev/null 2>&1; then
    for spec in "${agent_packages[@]}"; do
        found="$(npm view ${NPM_REGISTRY:+"--registry=$NPM_REGISTRY"} "$spec" version 2>/dev/null || true)"
        [ -n "$found" ] || die "$spec is not in the npm registry ${NPM_REGISTRY:-$(npm config get registry 2>/dev/null)} (pinned in anycode_actors/agents/stack.txt)"
    done
    log "the pinned stack is in the npm registry: ${agent_packages[*]}"
fi

# --- The CA bundle for HTTPS during the build (context file, never committed, fetch stage only).
mkdir -p "$scratch/ca"
rm -f "$scratch/ca/extra-ca.pem"
if [ -n "$BUILD_CA_FILE" ]; then
    [ -r "$BUILD_CA_FILE" ] || die "BUILD_CA_FILE=$BUILD_CA_FILE is not readable (set BUILD_CA_FILE= to build without one)"
    cp "$BUILD_CA_FILE" "$scratch/ca/extra-ca.pem"
    ca_note="trusting $BUILD_CA_FILE in the (discarded) fetch stage"
else
    ca_note="no extra CA"
fi
cleanup_ca() { rm -f "$scratch/ca/extra-ca.pem"; }
trap cleanup_ca EXIT

# The classic builder (dockerd 20.10 without buildx) and BuildKit both build this Dockerfile.
if docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=1
    builder_flags=(--progress=plain)
    builder="BuildKit"
else
    export DOCKER_BUILDKIT=0
    builder_flags=(--force-rm) # no failed-step containers left behind
    builder="classic builder (no buildx here)"
fi

buildlog="$scratch/build-image.log"
log "building $IMAGE from BASE=$base with the $builder; $ca_note (apt + npm: a few minutes; log $buildlog)"
set +e
DOCKER_CLI_HINTS=false docker build "${builder_flags[@]}" \
    -f "$here/Dockerfile.agent" \
    "${build_args[@]}" \
    --label "anycode.build-hash=$hash" \
    --label "anycode.base=$base" \
    -t "$IMAGE" \
    "$here" 2>&1 | tee "$buildlog" | while IFS= read -r line; do
    if [ "${VERBOSE:-0}" = 1 ]; then
        echo "$line"
    elif [[ "$line" =~ ^Step\ [0-9]+/[0-9]+\ : || "$line" =~ ^#[0-9]+\ \[ ]]; then
        log "  ${line:0:150}"
    fi
done
status=${PIPESTATUS[0]}
set -e
if [ "$status" != 0 ]; then
    echo "[build-image] last lines of $buildlog:" >&2
    tail -n 40 "$buildlog" | sed -E 's/\x1b\[[0-9;]*m//g' >&2
    die "docker build failed (exit $status)"
fi
drop_replaced "$previous_id"
size="$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.2f GB", $1 / 1e9 }')"
log "built $IMAGE ($size, build hash $hash)"
