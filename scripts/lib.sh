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

SHARED_VENV=${RUNYARD_SHARED_VENV:-/opt/runyard/venv}
SHARED_LINK=${RUNYARD_SHARED_LINK-/usr/local/bin/runyard}

make_shared_venv() {
    # A venv every user can run. It is made from Debian's own Python, since a venv's interpreter is
    # a link to the one it was made from, and root's pyenv (or any interpreter under /root) is not
    # theirs to run; `--copies` would not help, the standard library would stay there.
    local python=/usr/bin/python3
    if ! "$python" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        say "$python is not Python 3.11 or newer with venv: no CLI for other users in $SHARED_VENV"
        return 1
    fi
    if [ ! -x "$SHARED_VENV/bin/python" ]; then
        say "creating $SHARED_VENV: the runyard CLI and TUI for every user"
        as_root mkdir -p "$(dirname "$SHARED_VENV")"
        as_root "$python" -m venv "$SHARED_VENV"
    fi
    as_root chmod -R a+rX "$SHARED_VENV"  # whatever root's umask was
}

ensure_shared_cli() {
    # The CLI for the lab's other users (scripts/quickstart), in the shared venv. runyard is
    # installed into it, not linked to this checkout, which they may not be able to read.
    local stamp="$SHARED_VENV/.runyard-installed"
    make_shared_venv || return 1
    if [ ! -f "$stamp" ]; then
        say "installing runyard into $SHARED_VENV"
        as_root "$SHARED_VENV/bin/python" -m pip install -q "$ROOT[tui]"  # a copy of this checkout
        as_root touch "$stamp"
    elif [ -n "$(find "$ROOT/pyproject.toml" "$ROOT/cli" "$ROOT/daemon" "$ROOT/protocol" "$ROOT/tui" \
            \( -name '*.py' -o -name pyproject.toml \) -newer "$stamp" -print -quit)" ]; then
        say "updating runyard in $SHARED_VENV"
        as_root "$SHARED_VENV/bin/python" -m pip install -q "$ROOT[tui]"
        # the same version number: pip would keep the old copy
        as_root "$SHARED_VENV/bin/python" -m pip install -q --no-deps --force-reinstall "$ROOT"
        as_root touch "$stamp"
    fi
    as_root chmod -R a+rX "$SHARED_VENV"  # whatever root's umask was
    # On every user's PATH, unless something else has that name already.
    if [ -n "$SHARED_LINK" ] && { [ ! -e "$SHARED_LINK" ] || [ "$(readlink "$SHARED_LINK")" = "$SHARED_VENV/bin/runyard" ]; }; then
        as_root ln -sfn "$SHARED_VENV/bin/runyard" "$SHARED_LINK"
    fi
}

SLURM_DIR=${RUNYARD_SLURM_DIR:-/var/lib/runyard-slurm}

slurm_up() {
    # The controller answers and the node takes jobs (sinfo's short states; "drain" is not up).
    squeue -h -o %i >/dev/null 2>&1 && sinfo -h -p gpu -o %t 2>/dev/null | grep -q -x -E 'idle|mix|alloc'
}

ensure_oci_bundle() {
    # An OCI bundle of a local Docker image for container = "oci": its file system exported into
    # DIR/rootfs, DIR/config.json from `runc spec`. Made once (the image's id is kept beside it).
    local image=$1 dir=$2 id cid
    id=$(docker image inspect -f '{{.Id}}' "$image")
    if [ "$(cat "$dir/.image-id" 2>/dev/null)" = "$id" ]; then
        return
    fi
    say "making an OCI bundle of $image in $dir"
    as_root rm -rf "$dir"
    as_root mkdir -p "$dir/rootfs"
    cid=$(docker create "$image" true)
    docker export "$cid" | as_root tar -C "$dir/rootfs" -x
    docker rm "$cid" >/dev/null
    (cd "$dir" && as_root runc spec)
    echo "$id" | as_root tee "$dir/.image-id" >/dev/null
}

ensure_slurm() {
    # A real single-node Slurm cluster for the tests of cluster pools: Debian's packages, munged as
    # the munge user, slurmctld and slurmd as root, no systemd. Two fake GPUs are character devices
    # named in gres.conf, so Slurm grants them (CUDA_VISIBLE_DEVICES, SLURM_JOB_GPUS) like real ones.
    local missing=()
    command -v sbatch >/dev/null || missing+=(slurm-client)
    [ -x /usr/sbin/slurmctld ] || missing+=(slurmctld)
    [ -x /usr/sbin/slurmd ] || missing+=(slurmd)
    [ -x /usr/sbin/munged ] || missing+=(munge)
    command -v runc >/dev/null || missing+=(runc)
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]} from Debian's packages"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
    # container = "oci": srun --container runs a step in a bundle with runc (read by each step, so
    # written before the early return: a running cluster picks it up too).
    as_root mkdir -p /etc/slurm
    as_root tee /etc/slurm/oci.conf >/dev/null <<'OCICONF'
RunTimeQuery="runc --root=/run/runyard-oci state %n.%u.%j.%s.%t"
RunTimeKill="runc --root=/run/runyard-oci kill -a %n.%u.%j.%s.%t"
RunTimeDelete="runc --root=/run/runyard-oci delete --force %n.%u.%j.%s.%t"
RunTimeRun="runc --root=/run/runyard-oci run %n.%u.%j.%s.%t -b %b"
OCICONF
    # One at a time: test runs and benchmarks on this machine share the cluster, and two starting or
    # restarting it at once leave it half up.
    as_root mkdir -p "$SLURM_DIR"
    ( flock -w 240 9 || { echo "another ensure_slurm has held $SLURM_DIR/ensure.lock for 4 minutes" >&2; exit 1; }
      _start_slurm ) 9>"$SLURM_DIR/ensure.lock" || exit 1
}

_start_slurm() {
    local node cgroups=no
    node=$(hostname -s)
    # Memory cgroups (v1, writable) give Slurm real OUT_OF_MEMORY: proctrack/cgroup and task/cgroup
    # confine each job to its --mem. Without them (cgroup v2 only, or read-only), jobs are tracked by
    # process and their memory is not limited (the OOM test is skipped).
    if [ "$(stat -fc %T /sys/fs/cgroup/memory 2>/dev/null)" = cgroupfs ] && [ -w /sys/fs/cgroup/memory ]; then
        cgroups=yes
    fi
    as_root mkdir -p "$SLURM_DIR/state" "$SLURM_DIR/spool" "$SLURM_DIR/dev" /etc/slurm /run/munge
    [ -e "$SLURM_DIR/dev/gpu0" ] || as_root mknod "$SLURM_DIR/dev/gpu0" c 1 3
    [ -e "$SLURM_DIR/dev/gpu1" ] || as_root mknod "$SLURM_DIR/dev/gpu1" c 1 3
    local conf
    conf=$(cat <<SLURMCONF
# Written by runyard's scripts/lib.sh (ensure_slurm): a one-node cluster for the tests.
ClusterName=runyard
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
$(if [ $cgroups = yes ]; then echo "ProctrackType=proctrack/cgroup"; echo "TaskPlugin=task/cgroup"
  else echo "ProctrackType=proctrack/linuxproc"; echo "TaskPlugin=task/none"; fi)
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$SLURM_DIR/jobcomp.log
MinJobAge=300
GresTypes=gpu
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/slurmctld.log
SlurmdLogFile=$SLURM_DIR/slurmd.log
SchedulerParameters=sched_interval=1
# Four CPUs whatever the machine has (the tests' jobs mostly wait): a job that runs into its time
# limit for a minute and a half leaves room for the rest.
SlurmdParameters=config_overrides
NodeName=$node NodeAddr=127.0.0.1 CPUs=4 RealMemory=4000 Gres=gpu:2 State=UNKNOWN
PartitionName=gpu Nodes=$node Default=YES MaxTime=INFINITE State=UP
SLURMCONF
)
    local cgroup_conf="CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
ConstrainCores=no
ConstrainDevices=no"
    # The fake GPUs: without gres.conf the node registers no GPUs and Slurm drains it ("gres/gpu count
    # reported lower than configured").
    local gres_conf="NodeName=$node Name=gpu File=$SLURM_DIR/dev/gpu[0-1]"
    if [ "$conf" = "$(cat /etc/slurm/slurm.conf 2>/dev/null)" ] \
        && [ "$gres_conf" = "$(cat /etc/slurm/gres.conf 2>/dev/null)" ] && slurm_up; then
        return
    fi
    if slurm_up && squeue -h -t PD,CF,R,CG,S -o %i 2>/dev/null | grep -q .; then
        # Someone's jobs run on it: never taken from them; the tests that need this configuration
        # say what they miss (the OOM test is skipped without task/cgroup).
        say "the running Slurm cluster has an older configuration; it is restarted with this one when no job is queued"
        return
    fi
    if [ "$conf" != "$(cat /etc/slurm/slurm.conf 2>/dev/null)" ] \
        || [ "$gres_conf" != "$(cat /etc/slurm/gres.conf 2>/dev/null)" ]; then
        # Started with another configuration (an older ensure_slurm), now idle: stopped (by the pids
        # they recorded), then started again with this one.
        local daemon pid
        for daemon in slurmctld slurmd; do
            pid=$(cat "$SLURM_DIR/$daemon.pid" 2>/dev/null || true)
            if [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$daemon" ]; then
                say "stopping $daemon (pid $pid) to start it with a new configuration"
                as_root kill -TERM "$pid"
                for _ in $(seq 1 60); do
                    [ -e /proc/"$pid" ] || break
                    sleep 0.5
                done
            fi
        done
    fi
    say "starting a single-node Slurm cluster (state and logs: $SLURM_DIR)"
    printf '%s\n' "$conf" | as_root tee /etc/slurm/slurm.conf >/dev/null
    printf '%s\n' "$cgroup_conf" | as_root tee /etc/slurm/cgroup.conf >/dev/null
    printf '%s\n' "$gres_conf" | as_root tee /etc/slurm/gres.conf >/dev/null
    as_root chown munge:munge /run/munge
    [ -s /etc/munge/munge.key ] || as_root sh -c 'dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null'
    as_root chown munge:munge /etc/munge/munge.key
    as_root chmod 0400 /etc/munge/munge.key
    if ! pgrep -u munge -x munged >/dev/null; then
        # 9>&-: a daemon that kept the lock's descriptor would hold the lock for its whole life, and
        # the next ensure_slurm would wait for it in vain.
        as_root su -s /bin/sh munge -c '/usr/sbin/munged --force' 9>&-
    fi
    pgrep -x slurmctld >/dev/null || as_root sh -c 'setsid -f /usr/sbin/slurmctld </dev/null >/dev/null 2>&1' 9>&-
    pgrep -x slurmd >/dev/null || as_root sh -c 'setsid -f /usr/sbin/slurmd </dev/null >/dev/null 2>&1' 9>&-
    for _ in $(seq 1 60); do
        if slurm_up; then
            return
        fi
        # A controller killed mid-write can drain the node ("Duplicate jobid"): it is a test node, take it back.
        if sinfo -h -p gpu -o %t 2>/dev/null | grep -q -E '^(drain|drng|down)'; then
            as_root scontrol update NodeName="$node" State=RESUME 2>/dev/null || true
        fi
        sleep 0.5
    done
    echo "the Slurm cluster did not come up; see $SLURM_DIR/slurmctld.log and slurmd.log" >&2
    tail -n 20 "$SLURM_DIR/slurmctld.log" "$SLURM_DIR/slurmd.log" >&2 || true
    exit 1
}
