"""The quick start's CLI for the lab's other users: the venv scripts/quickstart makes for them
(`make_shared_venv` in scripts/lib.sh) runs for a real second user, whoever's Python set up root's
shell (a pyenv under /root is not theirs to run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .test_users import ensure_users

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_the_shared_venv_runs_for_another_user() -> None:
    users = ensure_users()
    where = Path(tempfile.mkdtemp(prefix="ry-shared-", dir="/tmp"))
    try:
        where.chmod(0o755)
        venv = where / "venv"
        made = subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib.sh; make_shared_venv"], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "RUNYARD_SHARED_VENV": str(venv)})
        assert made.returncode == 0, made.stderr
        probe = "import sys, ssl; print(sys.version_info >= (3, 11))"
        ran = subprocess.run([str(venv / "bin" / "python"), "-c", probe],
                             capture_output=True, text=True, timeout=60, user=users["ryalice"].pw_uid,
                             group=users["ryalice"].pw_gid, extra_groups=[], cwd="/")
        assert (ran.returncode, ran.stdout.strip()) == (0, "True"), ran.stderr
    finally:
        shutil.rmtree(where, ignore_errors=True)
