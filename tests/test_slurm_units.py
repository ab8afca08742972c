"""The protocol-free parts of Slurm support: what squeue, scontrol and sacct print, what each job
state means for an execution (decided by the lifecycle), the batch job asked for, and placement."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from runyard.daemon import slurm
from runyard.daemon.config import ClusterSection, SshSection
from runyard.daemon.inventory import Inventory
from runyard.daemon.lifecycle import Exited, Move, decide
from runyard.daemon.record import ExecutionRow
from runyard.daemon.runtime_slurm import ClusterHost, cluster_placements
from runyard.daemon.scheduler import Demand

# As Slurm 22.05 prints them (`squeue --me -h -t all -o '%i|%j|%T|%r|%N'`), with someone else's job,
# another pool's of this daemon (hpc-b, whose names also start with "runyard-abc-hpc-") and another
# daemon's.
SQUEUE = """\
41|runyard-abc-hpc-7-0|RUNNING|None|vm
42|runyard-abc-hpc-8-0|PENDING|Resources|
43|runyard-abc-hpc-9-2|TIMEOUT|TimeLimit|vm
44|train-by-hand|RUNNING|None|vm
45|runyard-abc-hpc-b-10-0|RUNNING|None|vm
46|runyard-abcd-hpc-11-0|RUNNING|None|vm
47|runyard-abc-hpc-12-0-1|RUNNING|None|vm
50|runyard-abc-hpc-8-0|PENDING|Priority|
"""


def test_squeue_lines_become_this_pools_jobs_by_name() -> None:
    jobs = slurm.parse_squeue(SQUEUE, slurm.job_name_prefix("abc", "hpc"))
    assert sorted(jobs) == ["runyard-abc-hpc-7-0", "runyard-abc-hpc-8-0", "runyard-abc-hpc-9-2"]
    assert jobs["runyard-abc-hpc-7-0"].running
    assert jobs["runyard-abc-hpc-8-0"].id == "50" and jobs["runyard-abc-hpc-8-0"].reason == "Priority"
    assert jobs["runyard-abc-hpc-9-2"].ended
    # The other pool's own prefix finds only its job.
    assert list(slurm.parse_squeue(SQUEUE, slurm.job_name_prefix("abc", "hpc-b"))) == ["runyard-abc-hpc-b-10-0"]
    assert slurm.parse_job_name("runyard-abc-hpc-b-10-0", "runyard-abc-hpc-b-") == (10, 0)
    assert slurm.job_name("abc", "hpc-b", 10, 0) == "runyard-abc-hpc-b-10-0"


def test_ended_jobs_and_what_the_lifecycle_makes_of_them() -> None:
    def final(state: str, code: int | None, status: str = "started", retries: int = 0) -> Move:
        exit_code, oom, cause = slurm.outcome(state, code)
        return decide(status, None, retries, Exited(exit_code, oom, cause=cause))

    assert final("COMPLETED", 0) == Move("complete")
    assert final("FAILED", 3) == Move("error", "exit-code 3")
    assert final("OUT_OF_MEMORY", None) == Move("error", "oom-killed")
    assert final("TIMEOUT", None) == Move("error", "time-limit")
    assert final("CANCELLED", None) == Move("error", "cancelled-outside-runyard")
    assert final("CANCELLED", None, status="stopping") == Move("stopped")
    assert final("FAILED", 143, status="stopping") == Move("stopped")  # its own stop's TERM
    assert final("NODE_FAIL", None) == Move("error", "host-lost")
    assert final("PREEMPTED", None, retries=1).requeue  # --retry: a new attempt
    assert final("", None) == Move("error", "process-lost")  # nobody knows the job any more
    assert final("", 0) == Move("complete")  # forgotten, but its script recorded how it ended


def test_exit_codes_from_scontrol_and_sacct() -> None:
    assert slurm.parse_look_up("JobId=9 JobName=x JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0", "9") == (
        "FAILED", 3)
    assert slurm.parse_look_up("JobId=9 JobState=CANCELLED ExitCode=0:15", "9") == ("CANCELLED", 143)
    assert slurm.parse_look_up("8|COMPLETED|0:0\n9|TIMEOUT|0:15\n", "9") == ("TIMEOUT", 143)
    assert slurm.parse_look_up("9|CANCELLED by 0|0:0\n", "9") == ("CANCELLED", 0)
    assert slurm.parse_look_up("", "9") == ("", None)


def test_the_job_asked_for() -> None:
    argv = slurm.sbatch_argv(slurm.Submit(partition="gpu", gres_type="a100", account="lab", qos="high",
                                          extra=("--constraint=ib",)),
                             "runyard-abc-hpc-7-0", "/shared/w/7", gpus=2, cpus=3.5, memory_mb=8000,
                             time_limit_seconds=90)
    assert argv == ["sbatch", "--parsable", "--job-name=runyard-abc-hpc-7-0", "--chdir=/shared/w/7/repository",
                    "--output=/shared/w/7/.runyard/stdout", "--error=/shared/w/7/.runyard/stderr",
                    "--no-requeue", "--ntasks=1", "--partition=gpu", "--account=lab", "--qos=high",
                    "--gres=gpu:a100:2", "--cpus-per-task=4", "--mem=8000M", "--time=1:30", "--constraint=ib",
                    "/shared/w/7/.runyard/batch.sh"]
    script = slurm.batch_script("/shared/w/7", "python3 train.py", {"VH_OUTPUTS_DIR": "/shared/w/7/outputs",
                                                                     "BAD NAME": "x", "Q": "a'b"})
    # The command under a step shell that passes a stop's TERM on to its whole process group; srun's own
    # messages apart from the command's stderr.
    assert ('srun --unbuffered --error="$r/stderr" --open-mode=append sh -c ' in script
            and ' runyard-step sh "$r/command.sh" 2> "$r/srun.err"' in script), script
    assert "export Q='a'\"'\"'b'" in script and "BAD NAME" not in script
    assert slurm.granted_gpus("vm\n0,1\n") == ("vm:0", "vm:1")


def test_a_cluster_pool_gets_work_in_priority_order_up_to_its_cap(tmp_path: Path) -> None:
    cluster = ClusterHost(ClusterSection(name="hpc", max_jobs=3), on_pending=lambda *_: None, daemon_id="abc",
                          ssh=SshSection(), sockets_dir=tmp_path, on_change=lambda _: None)
    now = time.time()
    queue = [Demand(i, priority, now + i, pool) for i, priority, pool in
             [(1, 0, "hpc"), (2, 5, "hpc"), (3, 0, "hpc"), (4, 9, "gpu-boxes"), (5, 1, "hpc"), (6, 0, None)]]
    assert cluster_placements(queue, [cluster], []) == []  # not connected yet
    cluster.link, cluster.inventory = "ready", Inventory(cpus=0, memory_mb=0, memory_available_mb=None)
    placed = cluster_placements(queue, [cluster], [])
    # No fitting: the highest priorities first, as many as the cap allows, no GPUs chosen by runyard.
    assert [(p.execution_id, p.host, p.gpus) for p in placed] == [(2, "hpc", ()), (5, "hpc", ()), (1, "hpc", ())]
    # One job still out: two more.
    running = ExecutionRow.__new__(ExecutionRow)  # only its host and status count here
    running.host, running.status = "hpc", "started"
    assert [p.execution_id for p in cluster_placements(queue, [cluster], [running])] == [2, 5]


def test_sinfo_of_a_partition() -> None:
    # `sinfo -h -N -O 'NodeHost:|,StateCompact:|,Gres:|,GresUsed:|'`; n2 is listed in two partitions.
    text = "n1|mix|gpu:2|gpu:1|\nn2|idle|gpu:a100:4(S:0-1)|gpu:a100:0(IDX:N/A)|\nn2|idle|gpu:a100:4|gpu:a100:0|\n" \
           "n3|drain*|(null)|gpu:0|\n"
    p = slurm.parse_sinfo(text)
    assert p.nodes == {"mix": 1, "idle": 1, "drain": 1} and (p.gpus_total, p.gpus_allocated) == (6, 1)


# What the attempt's control files, scontrol and sacct -c say after a controller restarted from state
# saved before it accepted job 57: the id is recorded, nobody knows it, and its script never began.
FILES_LOST = "present\n57\n-\n-\n-\n"
FILES_RAN = "present\n57\n-\n1764650000.5\n-\n"


def test_the_attempts_files_say_its_step_ran_out_of_memory() -> None:
    # srun said "task 0: Out Of Memory" (the job ended FAILED 1): the batch script wrote oom.
    files = slurm.parse_files("present\n57\n1\n1764650000.5\n1764650002.5\n1\nvm\n0\n")
    assert (files.exit_code, files.oom, files.gpus) == (1, True, ("vm:0",))
    assert not slurm.parse_files("present\n57\n0\n1764650000.5\n1764650002.5\n-\nvm\n\n").oom


def test_a_submit_the_controller_lost_is_made_again_once_under_its_name(tmp_path: Path) -> None:
    unknown = slurm.parse_look_up("", "57")  # scontrol fails (stderr only), sacct -c prints nothing
    assert unknown == ("", None)
    assert slurm.lost_submit(slurm.parse_files(FILES_LOST), unknown[0])
    # It began (the job ran, then was forgotten): lost, never submitted twice.
    assert not slurm.lost_submit(slurm.parse_files(FILES_RAN), unknown[0])
    # The completion file knows it: it ended, it was not lost.
    assert not slurm.lost_submit(slurm.parse_files(FILES_LOST), slurm.parse_look_up("57|CANCELLED|0:0\n", "57")[0])

    # The command itself, run with a squeue that has never heard of the name and an sbatch that counts.
    bin_dir, control = tmp_path / "bin", tmp_path / "d" / ".runyard"
    bin_dir.mkdir()
    control.mkdir(parents=True)
    (bin_dir / "squeue").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho x >> {tmp_path}/calls\necho '58;vm'\n")
    for tool in ("squeue", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    (control / "job_id").write_text("57\n")
    (control / "sbatch.args").write_bytes(b"sbatch\0--parsable\0batch.sh")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    command = slurm.resubmit_command("runyard-abc-hpc-7-0", str(control))
    first = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env)
    assert (first.returncode, first.stdout) == (0, "58\n"), first
    assert (control / "job_id").read_text() == "58\n" and (control / "job_id.lost").read_text() == "57\n"
    again = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env)
    assert (again.returncode, again.stdout) == (0, ""), again
    assert (tmp_path / "calls").read_text() == "x\n"  # submitted once


def test_one_command_writes_the_control_files_submits_and_sees_the_script_begin(tmp_path: Path) -> None:
    # Stand-ins on the login node: a squeue that knows no job, an sbatch that "runs" the job at once
    # (its script's first lines: started_at and the GPUs granted), as a node would.
    bin_dir, d = tmp_path / "bin", tmp_path / "w" / "7"
    bin_dir.mkdir()
    d.mkdir(parents=True)
    (bin_dir / "squeue").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\nr={d}/.runyard\n"
                                    "printf 'vm\\n1\\n' > $r/granted; echo 1764650000.5 > $r/started_at\n"
                                    "echo '58;vm'\n")
    for tool in ("squeue", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    argv = ["sbatch", "--parsable", "--job-name=runyard-abc-hpc-7-0", f"{d}/.runyard/batch.sh"]
    files = slurm.control_files("echo 'secret value'", "#!/bin/sh\nexport TOKEN=s3cret\n", argv)
    command = slurm.start_command("runyard-abc-hpc-7-0", str(d), write=True, wait_seconds=1.0)
    assert "s3cret" not in command  # on stdin only, never in a command line
    done = subprocess.run(["sh", "-c", command], input=files, capture_output=True,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    job_id, seen = slurm.parse_start(done.stdout.decode())
    assert (job_id, seen.job_id, seen.started, seen.gpus) == ("58", "58", "1764650000.5", ("vm:1",))
    control = d / ".runyard"
    assert (control / "batch.sh").read_text() == "#!/bin/sh\nexport TOKEN=s3cret\n"
    assert (control / "sbatch.args").read_bytes() == "\0".join(argv).encode()
    assert {f.name: f.stat().st_mode & 0o777 for f in control.iterdir() if f.name.endswith((".sh", ".args"))} == {
        "command.sh": 0o600, "batch.sh": 0o600, "sbatch.args": 0o600}
    assert control.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "args").read_text().split() == argv[1:]

    # A job that pends: its id, and files that say it has not begun (no error for what is not there).
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 59\n")
    pending = tmp_path / "w" / "8"
    pending.mkdir()
    command = slurm.start_command("runyard-abc-hpc-8-0", str(pending), write=True, wait_seconds=0.05)
    done = subprocess.run(["sh", "-c", command], input=files, capture_output=True,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    job_id, seen = slurm.parse_start(done.stdout.decode())
    assert (job_id, seen.present, seen.started, seen.gpus) == ("59", True, "", ())


def test_a_cancel_a_restarted_controller_undid_is_made_again() -> None:
    jobs = slurm.parse_squeue("57|runyard-abc-hpc-7-0|RUNNING|None|vm\n58|runyard-abc-hpc-8-0|COMPLETING|None|vm\n"
                              "59|runyard-abc-hpc-9-0|CANCELLED|None|vm\n", "runyard-abc-hpc-")
    running, completing, cancelled = (jobs[f"runyard-abc-hpc-{n}-0"] for n in (7, 8, 9))
    # A poll or two after scancel the job may still be listed as it was: not yet a sign of anything.
    assert not slurm.cancel_again(running, slurm.CANCEL_POLLS - 1)
    assert slurm.cancel_again(running, slurm.CANCEL_POLLS)
    assert not slurm.cancel_again(completing, slurm.CANCEL_POLLS + 5)
    assert not slurm.cancel_again(cancelled, slurm.CANCEL_POLLS + 5)


def test_a_job_slurm_ended_is_said_in_slurms_words() -> None:
    from runyard.daemon.lifecycle import Exited
    from runyard.daemon.runner import host_failed_note

    # As the runner writes it in the execution's log when the job's node failed: what Slurm said,
    # not that a container engine restarted (the batch script had recorded exit 0).
    said = slurm.ended_words("NODE_FAIL")
    assert host_failed_note("hpc", Exited(0, False, cause="node-lost"), said) == (
        "Slurm ended the job: NODE_FAIL (its node failed)")
    assert slurm.ended_words("PREEMPTED") == "Slurm ended the job: PREEMPTED (a job of higher priority preempted it)"
    assert slurm.ended_words("BOOT_FAIL") == "Slurm ended the job: BOOT_FAIL (its node failed to boot)"
    # A container engine's restart keeps its own words.
    assert host_failed_note("h1", Exited(137, False, engine_restarted=True), "restarted its container engine") == (
        "the container engine on host h1 restarted and ended the execution (exit code 137)")
