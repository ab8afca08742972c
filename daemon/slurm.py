"""Slurm without the wire: job names, the batch script, sbatch's arguments, squeue's and scontrol's
output, and what each Slurm job state means for an execution. No I/O.

runtime_slurm.py runs these over the login node's SSH connection; the lifecycle (lifecycle.py)
decides what an ended job means from the ``cause`` these give.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from .command_script import command_argv, shebang_argv_or_none
from .transport import q

CONTROL: Final = ".runyard"  # in the attempt's directory on the shared file system
LOST: Final = -1  # the exit code of a job nobody knows any more (lifecycle: process-lost)
# squeue's fields, "|"-separated: id, name, state, reason (why pending), nodes
SQUEUE_FORMAT: Final = "%i|%j|%T|%r|%N"
SQUEUE: Final = f"squeue --me -h -t all -o {q(SQUEUE_FORMAT)}"

PENDING_STATES: Final = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                                   "RESV_DEL_HOLD", "SPECIAL_EXIT", "SUSPENDED", "STOPPED", "RESIZING"})
RUNNING_STATES: Final = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"})
# Ended, but not by the command: runyard's lifecycle turns these into reasons (lifecycle.Exited.cause).
CAUSES: Final = {
    "TIMEOUT": "time-limit",
    "DEADLINE": "time-limit",
    "CANCELLED": "cancelled",
    "NODE_FAIL": "node-lost",
    "BOOT_FAIL": "node-lost",
    "PREEMPTED": "node-lost",
    "REVOKED": "node-lost",
}
# What Slurm's end states mean, in words, for the execution's log.
_STATE_WORDS: Final = {
    "NODE_FAIL": "its node failed",
    "BOOT_FAIL": "its node failed to boot",
    "PREEMPTED": "a job of higher priority preempted it",
    "REVOKED": "another cluster of the federation runs it",
    "TIMEOUT": "it reached its time limit",
    "DEADLINE": "it reached its deadline",
    "CANCELLED": "it was cancelled",
}
_DAEMON_ID = re.compile(r"[A-Za-z0-9_.]+")
_CLUSTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # as config.py allows
_ATTEMPT_PART = re.compile(r"([0-9]{1,18})-([0-9]{1,9})")
_SLURM_WORD = re.compile(r"[A-Za-z0-9_.:+-]{1,64}")


class SlurmError(Exception):
    pass


def job_name(daemon_id: str, cluster: str, execution_id: int, attempt: int) -> str:
    """What identifies an attempt's job among everyone's on the controller: this daemon, the cluster
    pool it was submitted for (two pools of one daemon may share a controller), the execution and the
    attempt. Known before sbatch runs, so a daemon killed during the submit finds the job again by it."""
    return f"{job_name_prefix(daemon_id, cluster)}{int(execution_id)}-{int(attempt)}"


def job_name_prefix(daemon_id: str, cluster: str) -> str:
    # The daemon id has no "-" (the store makes it of hex digits) and the attempt's part is two numbers,
    # so a name parses one way only: no daemon's or pool's prefix is the start of another's job name
    # (see parse_job_name).
    if not _DAEMON_ID.fullmatch(daemon_id):
        raise SlurmError(f"daemon id {daemon_id!r} cannot be part of a job name")
    if not _CLUSTER_NAME.fullmatch(cluster):
        raise SlurmError(f"cluster name {cluster!r} cannot be part of a job name")
    return f"runyard-{daemon_id}-{cluster}-"


def parse_job_name(name: str, prefix: str) -> tuple[int, int] | None:
    """The execution and attempt of a job of ``prefix``'s daemon and pool; None for anyone else's.
    Exact: pool "a"'s prefix also starts the names of pool "a-1"'s jobs ("runyard-d-a-1-5-0"), which
    have three numbers where pool "a"'s have two."""
    if not name.startswith(prefix):
        return None
    match = _ATTEMPT_PART.fullmatch(name, len(prefix))
    return (int(match[1]), int(match[2])) if match else None


def check_word(what: str, value: str) -> str:
    """A partition, account, QoS or GRES type as Slurm spells them; anything else is refused."""
    if value and not _SLURM_WORD.fullmatch(value):
        raise SlurmError(f"{what} {value!r} is not a Slurm name (letters, digits, '_', '.', ':', '+', '-')")
    return value


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    name: str
    state: str  # Slurm's, e.g. PENDING, RUNNING, COMPLETED, TIMEOUT
    reason: str  # why it pends (Resources, Priority, ...), or None
    nodes: str

    @property
    def pending(self) -> bool:
        return self.state in PENDING_STATES

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

    @property
    def ended(self) -> bool:
        return not self.pending and not self.running


def outcome(state: str, code: int | None) -> tuple[int, bool, str]:
    """An ended job's exit code, whether it ran out of memory, and the cause when it was not its
    command that ended it (see CAUSES). ``state`` "": nobody knows the job any more, so it is lost
    (exit code -1) unless its batch script recorded a code."""
    if not state:
        return (code if code is not None else LOST), False, ""
    if state == "OUT_OF_MEMORY":
        return (code if code is not None else 137), True, ""
    if state in ("COMPLETED", "FAILED"):
        return (code if code is not None else (0 if state == "COMPLETED" else 1)), False, ""
    return (code if code is not None else LOST), False, CAUSES.get(state, "cancelled")


def ended_words(state: str) -> str:
    """What Slurm said when it ended a job other than by its command's exit, for the execution's log."""
    if not state:
        return "Slurm no longer knows the job"
    words = _STATE_WORDS.get(state)
    return f"Slurm ended the job: {state}" + (f" ({words})" if words else "")


def parse_squeue(text: str, prefix: str) -> dict[str, Job]:
    """``SQUEUE``'s lines for the jobs of ``prefix`` (this daemon's pool, see parse_job_name), by name.
    A name seen twice (resubmitted by someone) keeps its newest job."""
    jobs: dict[str, Job] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 5 or parse_job_name(parts[1], prefix) is None:
            continue
        job = Job(id=parts[0].strip(), name=parts[1], state=parts[2].strip().split()[0] if parts[2].strip() else "",
                  reason=parts[3].strip(), nodes=parts[4].strip())
        old = jobs.get(job.name)
        if old is None or _job_number(job.id) >= _job_number(old.id):
            jobs[job.name] = job
    return jobs


def _job_number(job_id: str) -> int:
    head = job_id.split("_")[0]
    return int(head) if head.isdigit() else -1


def parse_scontrol(text: str) -> tuple[str, int | None]:
    """`scontrol -o show job ID`: the job's state and its exit code (None if it has none yet).
    A job killed by a signal has ExitCode=0:9; that is reported as 128 + the signal, like a shell."""
    state, code = "", None
    for field in text.split():
        key, _, value = field.partition("=")
        if key == "JobState":
            state = value
        elif key == "ExitCode":
            status, _, signal = value.partition(":")
            if status.isdigit() and signal.isdigit():
                code = int(status) if int(signal) == 0 else 128 + int(signal)
    return state, code


def parse_sacct(text: str, job_id: str) -> tuple[str, int | None]:
    """`sacct -P -o JobID,State,ExitCode` (or `sacct -c`, from the job completion file, where there is
    no accounting database): the job's state and exit code. Text, not --json: this Slurm's JSON
    misreports exit codes."""
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or parts[0] != job_id:
            continue
        state = parts[1].split()[0] if parts[1].strip() else ""
        status, _, signal = parts[2].partition(":")
        code = None
        if status.isdigit() and signal.isdigit():
            code = int(status) if int(signal) == 0 else 128 + int(signal)
        return state, code
    return "", None


def look_up_command(job_id: str) -> str:
    """One job squeue has forgotten: scontrol while the controller remembers it, else sacct (with an
    accounting database), else sacct -c (the job completion file)."""
    return (f"scontrol -o show job {q(job_id)} 2>/dev/null || "
            f"sacct -n -P -X -j {q(job_id)} -o JobID,State,ExitCode 2>/dev/null | grep . || "
            f"sacct -c -n -P -j {q(job_id)} -o JobID,State,ExitCode 2>/dev/null")


def parse_look_up(text: str, job_id: str) -> tuple[str, int | None]:
    return parse_scontrol(text) if "JobState=" in text else parse_sacct(text, job_id)


def time_limit(seconds: float) -> str:
    """sbatch --time as minutes:seconds (at least one second)."""
    total = max(1, int(seconds + 0.999))
    return f"{total // 60}:{total % 60:02d}"


@dataclass(frozen=True, slots=True)
class Submit:
    """What a cluster asks of every job, from its configuration."""

    partition: str
    gres_type: str = ""
    account: str = ""
    qos: str = ""
    extra: tuple[str, ...] = ()


def sbatch_argv(submit: Submit, name: str, directory: str, *, gpus: int, cpus: float, memory_mb: int,
                time_limit_seconds: float | None) -> list[str]:
    """sbatch's arguments for one attempt (the batch script is the last)."""
    control = f"{directory}/{CONTROL}"
    argv = ["sbatch", "--parsable", f"--job-name={name}", f"--chdir={directory}/repository",
            f"--output={control}/stdout", f"--error={control}/stderr", "--no-requeue", "--ntasks=1"]
    if submit.partition:
        argv.append(f"--partition={check_word('partition', submit.partition)}")
    if submit.account:
        argv.append(f"--account={check_word('account', submit.account)}")
    if submit.qos:
        argv.append(f"--qos={check_word('qos', submit.qos)}")
    if gpus > 0:
        kind = check_word("gres_type", submit.gres_type)
        argv.append(f"--gres=gpu:{kind}:{gpus}" if kind else f"--gres=gpu:{gpus}")
    if cpus > 0:
        argv.append(f"--cpus-per-task={max(1, int(cpus + 0.999))}")
    if memory_mb > 0:
        argv.append(f"--mem={int(memory_mb)}M")
    if time_limit_seconds:
        argv.append(f"--time={time_limit(time_limit_seconds)}")
    argv += list(submit.extra)
    argv.append(f"{control}/batch.sh")
    return argv


# The step's first process: Slurm sends a signal other than KILL (`scancel --signal=TERM`, a TIMEOUT's
# warning) to it alone, so a command under it (python under the step's shell) never heard a stop and
# was killed after the grace. This passes TERM on to the step's whole process group, as the other
# runtimes send it, ignores it itself, and ends with the command's exit code once the command ends.
# It also sets CUDA_VISIBLE_DEVICES empty where Slurm granted no GPU (Slurm unsets it in the step), as
# in a Docker container: no library then picks a GPU of its own.
TERM_TO_GROUP: Final = (': "${CUDA_VISIBLE_DEVICES=}"; export CUDA_VISIBLE_DEVICES; '
                        "trap 'trap \"\" TERM; kill -TERM 0' TERM; \"$@\" & p=$!; wait $p; c=$?; "
                        "while kill -0 $p 2>/dev/null; do wait $p; c=$?; done; exit $c")


def batch_script(directory: str, command: str, environment: dict[str, str], *, container: str = "") -> str:
    """The job's batch script: the Valohai environment, the command under `srun --unbuffered` (so
    lines reach the output file as they are printed), and its own record of the GPUs it was granted,
    its start, end and exit code in the attempt's control directory."""
    control = f"{directory}/{CONTROL}"
    exports = "".join(f"export {name}={q(value)}\n" for name, value in environment.items() if name.isidentifier())
    launcher = " ".join(q(a) for a in command_argv(command)[:-1])
    shebang = shebang_argv_or_none(command) is not None
    run = f'{launcher} "$(cat "$r/command.sh")"' if shebang else 'sh "$r/command.sh"'
    # container: the attempt's OCI bundle; the batch script stays on the node (it records the job's
    # files), the command's step runs in the bundle.
    # The command's stderr goes to its file from the node (--error); srun's own messages to srun.err,
    # added to the stderr file after it: an out-of-memory kill of the step is told only there ("task 0:
    # Out Of Memory"), the job itself ends FAILED 1, so the script records it (oom).
    srun = 'srun --unbuffered --error="$r/stderr" --open-mode=append'
    where = f" --container={q(container)}" if container else ""
    step = f"{srun}{where} sh -c {q(TERM_TO_GROUP)} runyard-step {run}"
    return (
        "#!/bin/sh\n"
        "# Written by runyard: one attempt of an execution, as one Slurm job.\n"
        "umask 077\n"
        f"r={q(control)}\n"
        f"{exports}"
        'printf "%s\\n%s\\n" "${SLURM_JOB_NODELIST:-}" "${SLURM_JOB_GPUS:-${CUDA_VISIBLE_DEVICES:-}}" '
        '> "$r/granted.tmp" && mv "$r/granted.tmp" "$r/granted"\n'
        'date +%s.%N > "$r/started_at.tmp"; mv "$r/started_at.tmp" "$r/started_at"\n'
        f'{step} 2> "$r/srun.err"\n'
        "c=$?\n"
        'if grep -q "Out Of Memory" "$r/srun.err"; then echo 1 > "$r/oom"; fi\n'
        'cat "$r/srun.err" >&2\n'
        'date +%s.%N > "$r/finished_at.tmp"; mv "$r/finished_at.tmp" "$r/finished_at"\n'
        'echo $c > "$r/exit_code.tmp" && mv "$r/exit_code.tmp" "$r/exit_code"\n'
        "exit $c\n"
    )


def granted_gpus(text: str) -> tuple[str, ...]:
    """The batch script's record of its GPUs ("node\\n0,1") as ids "node:0", "node:1"."""
    lines = text.splitlines()
    node = lines[0].strip() if lines else ""
    indexes = lines[1].strip() if len(lines) > 1 else ""
    return tuple(f"{node}:{i.strip()}" for i in indexes.split(",") if i.strip().isdigit())


def submit_command(name: str, control: str) -> str:
    """Submit the attempt's job once: a job id already recorded, or a job of this name the controller
    still knows (a daemon killed during the submit), is adopted, never submitted again. Prints the id."""
    return (
        f"r={q(control)}; "
        'if [ -s "$r/job_id" ]; then cat "$r/job_id"; exit 0; fi; '
        f"id=$(squeue --me -h -t all -n {q(name)} -o %i | head -n 1); "
        # sbatch's arguments as create wrote them (NUL-separated, the first is "sbatch" itself)
        'if [ -z "$id" ]; then id=$(xargs -0 -a "$r/sbatch.args" env) || exit 1; fi; '
        'id=${id%%;*}; echo "$id" > "$r/job_id.tmp" && mv "$r/job_id.tmp" "$r/job_id" && echo "$id"'
    )


def control_files(command: str, script: str, argv: Sequence[str]) -> bytes:
    """command.sh, batch.sh and sbatch.args as one tar stream, the start command's stdin: the batch
    script holds the execution's secrets, which never go into a command line (ps shows those)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("command.sh", command.encode()), ("batch.sh", script.encode()),
                           ("sbatch.args", "\0".join(argv).encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


QUICK_START_SECONDS: Final = 1.0  # how long start_command waits for a job's script to begin


def start_command(name: str, directory: str, *, write: bool, wait_seconds: float) -> str:
    """An attempt's start in one round trip: its control files written from stdin (``write``: a tar
    of control_files), its job submitted once (submit_command: adopted by name, never twice), then,
    for up to ``wait_seconds``, a look on the shared file system for its script to begin (no
    controller call). Prints the job id on the first line, then FILES."""
    steps = [f"d={q(directory)}", f"r={q(directory + '/' + CONTROL)}", "umask 077"]
    if write:
        # No ownership or modes from the archive: the login user's, and the umask's (0600).
        steps.append('{ mkdir -p "$r" && chmod 0700 "$d" "$r" && '
                     'tar -x -f - -C "$r" --no-same-owner --no-same-permissions; } || exit 1')
    steps.append(f"id=$({submit_command(name, directory + '/' + CONTROL)}) || exit 1")
    steps.append('echo "$id"')
    if wait_seconds > 0:
        ticks = max(1, int(wait_seconds / 0.02))
        steps.append(f'i=0; while [ $i -lt {ticks} ] && [ ! -e "$r/started_at" ] && [ ! -e "$r/exit_code" ]; '
                     "do sleep 0.02; i=$((i+1)); done")
    return "; ".join(steps) + "; " + FILES


def parse_start(text: str) -> tuple[str, Files]:
    first, _, rest = text.partition("\n")
    return first.strip(), parse_files(rest)


# Prints, for the attempt directory in $d: the recorded job id, exit code, start and end times, whether
# its step ran out of memory, and the granted GPUs' two lines, each on a line of its own ("-" where not
# written).
FILES: Final = (
    'r="$d/.runyard"; [ -d "$r" ] || { echo missing; exit 0; }; echo present; '
    'for f in job_id exit_code started_at finished_at oom; do v=$(head -c 40 "$r/$f" 2>/dev/null | tr -cd 0-9.); '
    'echo "${v:--}"; done; head -c 4000 "$r/granted" 2>/dev/null; exit 0'
)
# (exit 0: before the job runs there is no "granted" yet, and head's failure made every look at a
# job not yet running an error, "-": an attempt a daemon kill left unsubmitted then failed at recovery
# instead of being submitted.)


@dataclass(frozen=True, slots=True)
class Files:
    present: bool
    job_id: str = ""
    exit_code: int | None = None
    started: str = ""
    finished: str = ""
    gpus: tuple[str, ...] = ()
    oom: bool = False  # srun said its step ran out of memory


def parse_files(text: str) -> Files:
    lines = text.splitlines()
    if not lines or lines[0] != "present":
        return Files(present=False)
    values = [v if v != "-" else "" for v in (lines[1:6] + ["-"] * 5)[:5]]
    code = int(values[1]) if values[1].isdigit() else None
    return Files(present=True, job_id=values[0], exit_code=code, started=values[2], finished=values[3],
                 oom=values[4] == "1", gpus=granted_gpus("\n".join(lines[6:])))


# One line per node: name, state, GRES configured, GRES in use ("|"-separated, each field ends with "|").
SINFO_FIELDS: Final = "NodeHost:|,StateCompact:|,Gres:|,GresUsed:|"


def sinfo_command(partition: str) -> str:
    where = f" -p {q(check_word('partition', partition))}" if partition else ""
    return f"sinfo -h -N{where} -O {q(SINFO_FIELDS)}"


@dataclass(frozen=True, slots=True)
class Partition:
    nodes: dict[str, int]
    gpus_total: int
    gpus_allocated: int


def _gpu_count(gres: str) -> int:
    """GPUs in a GRES list: "gpu:2", "gpu:a100:4(S:0-1)", "gpu:0,shard:8" ..."""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def parse_sinfo(text: str) -> Partition:
    nodes: dict[str, int] = {}
    seen: set[str] = set()
    total = used = 0
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 4 or not parts[0] or parts[0] in seen:
            continue  # a node in several partitions is listed once per partition
        seen.add(parts[0])
        state = parts[1].rstrip("*~#!%$@^-")
        nodes[state] = nodes.get(state, 0) + 1
        total += _gpu_count(parts[2])
        used += _gpu_count(parts[3])
    return Partition(nodes=nodes, gpus_total=total, gpus_allocated=used)


def resubmit_command(name: str, control: str) -> str:
    """A submit the controller lost (restarted from state saved before it): the recorded id is set
    aside and the attempt submitted again under its name, once; a second loss is the job's end.
    Prints the new id, or nothing when it was resubmitted before."""
    return (f"r={q(control)}; [ -e \"$r/resubmitted\" ] && exit 0; : > \"$r/resubmitted\" && "
            'mv "$r/job_id" "$r/job_id.lost" && ' + submit_command(name, control))


def lost_submit(files: Files, looked_up_state: str) -> bool:
    """A job id was recorded but no controller query knows it, and its script never began: the
    controller lost the submit, the job never ran (so submitting it again runs it once)."""
    return bool(files.present and files.job_id and not looked_up_state and files.exit_code is None
                and not files.started)


def cancel_again(job: Job, polls_since_cancel: int) -> bool:
    """A job runyard cancelled that is still pending or running polls later: a restarted controller
    undid the cancel. COMPLETING is a cancel still taking effect."""
    return polls_since_cancel >= CANCEL_POLLS and not job.ended and job.state != "COMPLETING"


CANCEL_POLLS: Final = 3


def oci_config(spec: dict[str, Any], directory: str) -> dict[str, Any]:
    """An attempt's OCI runtime config from its image's bundle (as `runc spec` wrote it). Slurm runs
    the bundle's own rootfs/ (it ignores root.path), so the attempt's bundle holds a hard-linked copy
    of the image's: read-only, so no step can change the image's files through a shared link, with a
    tmpfs at /tmp. The attempt's directory is mounted at /valohai (as in a Docker container) and at
    its own path (the Valohai variables name it), the command starts in the repository; Slurm sets the
    process's arguments and environment."""
    config = dict(spec)
    config["root"] = {"path": "rootfs", "readonly": True}
    process = dict(config.get("process") or {})
    process["terminal"] = False
    process["cwd"] = "/valohai/repository"
    config["process"] = process
    ours = ("/valohai", directory, "/tmp")
    mounts = [m for m in config.get("mounts") or [] if m.get("destination") not in ours]
    # /tmp first: a work directory under /tmp is mounted over it, not hidden by it.
    mounts.append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "nodev", "mode=1777"]})
    for destination in ("/valohai", directory):
        mounts.append({"destination": destination, "type": "bind", "source": directory,
                       "options": ["rbind", "rw"]})
    config["mounts"] = mounts
    return config
