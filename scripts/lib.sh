# Shared by the setup scripts: install and start what runyard and its tests need.
# Works as root on a fresh Debian 12 machine with no systemd and no image registry.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${RUNYARD_VENV:-$ROOT/.venv}
BASE_IMAGE=${RUNYARD_BASE_IMAGE:-runyard-base:bookworm-py3}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    command -v git >/dev/null || missing+=(git)
    command -v tmux >/dev/null || missing+=(tmux)
    # the private-registry tests: a real registry (registry:2's code) with htpasswd basic auth
    command -v docker-registry >/dev/null || missing+=(docker-registry)
    command -v htpasswd >/dev/null || missing+=(apache2-utils)
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]} from Debian's packages"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" iptables ca-certificates >/dev/null
    fi
}

ensure_dockerd() {
    if docker info >/dev/null 2>&1; then
        return
    fi
    say "starting dockerd (log: /var/log/runyard-dockerd.log)"
    # Its own session, as systemd would start it: not tied to this terminal, and scheduled
    # as its own group (sched_autogroup) rather than alongside whatever this shell runs.
    as_root sh -c 'setsid -f dockerd </dev/null >/var/log/runyard-dockerd.log 2>&1'
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && return
        sleep 0.5
    done
    echo "dockerd did not come up; see /var/log/runyard-dockerd.log" >&2
    tail -20 /var/log/runyard-dockerd.log >&2 || true
    exit 1
}

ensure_base_image() {
    # No image registry is reachable: build a small Debian image with Python locally.
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        return
    fi
    say "building $BASE_IMAGE with mmdebstrap (about a minute, once)"
    as_root mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
        --mode=root bookworm - | docker import -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
}

VH_IMAGE=${RUNYARD_VH_IMAGE:-runyard-vh:bookworm-py3}

ensure_vh_image() {
    # The base image plus the valohai-utils package, for tests of scripts written for Valohai.
    # Its wheels come from the package registry on this side; the build itself needs no network.
    if docker image inspect "$VH_IMAGE" >/dev/null 2>&1; then
        return
    fi
    say "building $VH_IMAGE (base image + valohai-utils)"
    local ctx
    ctx=$(mktemp -d)
    "$VENV/bin/python" -m pip download -q --only-binary=:all: --python-version 3.11 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
        -d "$ctx/wheels" valohai-utils
    cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE_IMAGE
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install -q --no-index --find-links /tmp/wheels valohai-utils \
    && rm -rf /tmp/wheels
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
DOCKERFILE
    docker build -q -t "$VH_IMAGE" "$ctx" >/dev/null
    rm -rf "$ctx"
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.runyard-installed"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        say "installing runyard and its dependencies into $VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -e "$ROOT[dev,tui,optimize]"
        touch "$stamp"
    fi
}
