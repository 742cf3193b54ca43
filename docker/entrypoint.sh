#!/usr/bin/env bash
# Entrypoint of the anycode sandbox image (run under tini).
#
# Environment:
#   GITHUB_TOKEN / GH_TOKEN  optional; git (credential helper in /etc/gitconfig, github.com only)
#                            and gh read it from the environment when they need it; it is never
#                            written to disk and never printed
#   ANYCODE_REPO             optional; cloned into /workspace/repo. A failed clone does not stop the
#                            container: it is logged (docker logs) and recorded in
#                            $ANYCODE_STATE_DIR/clone-failed, and ANYCODE_CLONE_STATUS=failed /
#                            ANYCODE_CLONE_ERROR are exported to the server and the agents
#   ANYCODE_BRANCH           optional branch or tag to check out
#   ANYCODE_CLONE_DEPTH      optional shallow-clone depth
#   ANYCODE_CLONE_TIMEOUT    seconds before the clone is abandoned (default 300)
#   ANYCODE_STATE_DIR        where markers go (default /workspace/.anycode): clone-status holds
#                            ok | failed | skipped, clone-failed the error of a failed clone
#   ANYCODE_PROTOCOL         sandbox-agent (default): serve sandbox-agent on 0.0.0.0:2468 behind
#                            the token gate, with token ANYCODE_AGENT_TOKEN (required; it is on
#                            no command line) and telemetry off;
#                            acp | acpx: idle, the daemon talks to the agents through docker exec
#   ANYCODE_AGENT_PORT       the port the daemon connects to (default 2468); sandbox-agent itself
#                            listens on 127.0.0.1 at the port after it
#   GIT_AUTHOR_NAME/_EMAIL   optional commit identity (default "anycode agent")
# Arguments, when given, are run instead of the protocol's process (after the setup above).
set -eu

log() { printf '[anycode-entrypoint] %s\n' "$*" >&2; }

# Remove anything secret from a message: token values and user:password@ parts of URLs.
redact() {
    local text="$1" secret
    for secret in "${GITHUB_TOKEN:-}" "${GH_TOKEN:-}" "${ANYCODE_AGENT_TOKEN:-}"; do
        if [ -n "$secret" ]; then text="${text//"$secret"/***}"; fi
    done
    printf '%s' "$text" | sed -E 's#(://)[^/@[:space:]]+@#\1***@#g'
}

if [ "$(id -u)" = 0 ]; then
    # Claude Code refuses --dangerously-skip-permissions as root unless told it is in a sandbox.
    export IS_SANDBOX=1
fi

# --- GitHub auth: nothing to write; make both variable names available to child processes. ----
if [ -n "${GITHUB_TOKEN:-}" ] || [ -n "${GH_TOKEN:-}" ]; then
    export GH_TOKEN="${GH_TOKEN:-${GITHUB_TOKEN:-}}"
    export GITHUB_TOKEN="${GITHUB_TOKEN:-$GH_TOKEN}"
    log "GitHub token present: git (https://github.com) and gh will use it from the environment"
fi
git config --global user.name >/dev/null 2>&1 || git config --global user.name "${GIT_AUTHOR_NAME:-anycode agent}" || true
git config --global user.email >/dev/null 2>&1 || git config --global user.email "${GIT_AUTHOR_EMAIL:-anycode-agent@users.noreply.github.com}" || true

# --- Markers. -------------------------------------------------------------------------------
state_dir="${ANYCODE_STATE_DIR:-/workspace/.anycode}"
if ! mkdir -p "$state_dir" 2>/dev/null || [ ! -w "$state_dir" ]; then
    log "WARNING: $state_dir is not writable; markers go to /tmp/anycode instead"
    state_dir=/tmp/anycode
    mkdir -p "$state_dir"
fi
export ANYCODE_STATE_DIR="$state_dir"
rm -f "$state_dir/clone-failed"

set_clone_status() {
    export ANYCODE_CLONE_STATUS="$1"
    printf '%s\n' "$1" >"$state_dir/clone-status"
}

# --- Clone. ---------------------------------------------------------------------------------
repo_dir=/workspace/repo
if [ -z "${ANYCODE_REPO:-}" ]; then
    set_clone_status skipped
elif [ -d "$repo_dir/.git" ]; then
    log "$repo_dir already holds a clone; not cloning again"
    set_clone_status ok
else
    shown_repo="$(redact "$ANYCODE_REPO")"
    clone_args=(clone --quiet)
    if [ -n "${ANYCODE_BRANCH:-}" ]; then clone_args+=(--branch "$ANYCODE_BRANCH"); fi
    if [ -n "${ANYCODE_CLONE_DEPTH:-}" ]; then clone_args+=(--depth "$ANYCODE_CLONE_DEPTH"); fi
    log "cloning $shown_repo into $repo_dir"
    rc=0
    output="$(GIT_TERMINAL_PROMPT=0 timeout "${ANYCODE_CLONE_TIMEOUT:-300}" \
        git "${clone_args[@]}" -- "$ANYCODE_REPO" "$repo_dir" 2>&1)" || rc=$?
    if [ "$rc" = 0 ]; then
        log "clone of $shown_repo done"
        set_clone_status ok
    else
        if [ "$rc" = 124 ]; then output="timed out after ${ANYCODE_CLONE_TIMEOUT:-300} s; $output"; fi
        message="$(redact "$output" | tr '\n' ' ' | sed -E 's/ +$//')"
        rm -rf "$repo_dir" 2>/dev/null || true
        printf 'repo: %s\nexit: %s\nerror: %s\n' "$shown_repo" "$rc" "$message" >"$state_dir/clone-failed"
        set_clone_status failed
        export ANYCODE_CLONE_ERROR="$message"
        log "ERROR: clone of $shown_repo failed (exit $rc): $message"
        log "ERROR: continuing with an empty $repo_dir (marker: $state_dir/clone-failed)"
        # The agent's working directory is $repo_dir whenever a repository was asked for: an
        # empty one lets the session run without the repository instead of failing to start.
        mkdir -p "$repo_dir"
    fi
fi
if [ -d "$repo_dir" ]; then cd "$repo_dir"; else cd /workspace 2>/dev/null || true; fi

# --- Run. -----------------------------------------------------------------------------------
if [ "$#" -gt 0 ]; then
    exec "$@"
fi

protocol="${ANYCODE_PROTOCOL:-sandbox-agent}"
case "$protocol" in
sandbox-agent)
    if [ -z "${ANYCODE_AGENT_TOKEN:-}" ]; then
        log "ERROR: ANYCODE_AGENT_TOKEN is not set; refusing to start sandbox-agent without a token"
        exit 64
    fi
    port="${ANYCODE_AGENT_PORT:-2468}"
    if [ "$port" -lt 65535 ]; then inner_port=$((port + 1)); else inner_port=$((port - 1)); fi
    # The server's own log goes to stdout too (docker logs), not only to ~/.local/share/sandbox-agent.
    export SANDBOX_AGENT_LOG_STDOUT="${SANDBOX_AGENT_LOG_STDOUT:-1}"
    log "starting sandbox-agent $(sandbox-agent --version 2>/dev/null | awk '{ print $NF }') on 127.0.0.1:$inner_port behind the token gate on 0.0.0.0:$port (token auth, telemetry off)"
    # sandbox-agent 0.4.2 takes its token only as `--token <token>` (no environment variable, no
    # file: `sandbox-agent server --help`; server/packages/sandbox-agent/src/cli.rs in
    # https://github.com/rivet-dev/sandbox-agent), and every user of the host sees a process's
    # arguments (ps, docker top). So sandbox-agent listens on the container's loopback without a
    # token, and the gate below checks the token, which it takes from ANYCODE_AGENT_TOKEN and
    # removes before it starts sandbox-agent (so neither sandbox-agent nor the agents see it).
    # Processes inside the container can reach sandbox-agent without the token; they could read
    # it from its command line before. The gate is anycode_actors/sandboxes/agent_gate.py, which
    # docker/build-image.sh puts into the image.
    exec python3 /usr/local/lib/anycode/agent_gate.py --listen "0.0.0.0:$port" \
        --upstream-port "$inner_port" -- \
        sandbox-agent server --host 127.0.0.1 --port "$inner_port" --no-token --no-telemetry
    ;;
acp | acpx)
    log "protocol $protocol: idling; the daemon runs agents through docker exec"
    exec sleep infinity
    ;;
*)
    log "ERROR: unknown ANYCODE_PROTOCOL '$protocol' (expected sandbox-agent, acp or acpx)"
    exit 64
    ;;
esac
