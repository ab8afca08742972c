"""What `run`, `restart` and `task run` check on the user's side before a snapshot is made or uploaded.

The title, `--var`s and `--tag`s are checked by the daemon's own functions, so a request the
daemon would refuse for them costs no snapshot and no upload. What only the daemon knows (its
secrets' names, pools, GPUs, the ml.yaml image mapping) it still checks after the upload.
For `restart --adhoc`, the working tree is checked as `run` checks it (cli/precheck.py), with
the old execution's step, parameters and inputs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from runyard.daemon.mlyaml import is_ml_yaml
from runyard.daemon.runoptions import RunOptionError, check_tags, check_variables, raw_parameters
from runyard.daemon.snapshots import Snapshot, SnapshotError, read_archive_file, snapshot_worktree
from runyard.daemon.steps import StepError, load_config
from runyard.daemon.titles import TitleError, checked_title
from runyard.protocol.methods import ExecutionView

from .precheck import Refused, check_request


def check_options(args: argparse.Namespace) -> None:
    """Refused for a title, variable or tag the daemon would refuse (secret names aside)."""
    try:
        checked_title(getattr(args, "title", None))
        check_variables(dict(getattr(args, "variables", None) or []), ())
        check_tags(getattr(args, "tags", None) or [])
    except (TitleError, RunOptionError) as exc:
        raise Refused(str(exc)) from None


def worktree_of(directory: str) -> tuple[Path, Snapshot]:
    """The git working tree ``directory`` is in, archived; Refused for a missing folder or one
    outside any repository (archiving a whole home or /tmp is never what was meant)."""
    import git

    path = Path(directory).resolve()
    if not path.is_dir():
        raise Refused(f"-C {directory}: no such directory")
    try:
        git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise Refused(f"{path} is not in a git working tree: --adhoc takes a repository's working tree "
                      "(cd into it or give -C DIR)") from None
    try:
        return path, snapshot_worktree(path)
    except SnapshotError as exc:
        raise Refused(str(exc)) from None


def check_adhoc_restart(old: ExecutionView, snap: Snapshot, directory: Path,
                        parameters: dict[str, str | list[str]], inputs: dict[str, list[str]]) -> tuple[str, ...]:
    """As the daemon's restart with a new snapshot (daemon/restarts.py) will: the old values the
    new step still has, with the given ones over them."""
    config_path = old.config_path
    kept_parameters = raw_parameters(old.parameters)
    kept_inputs = dict(old.inputs)
    try:
        text = read_archive_file(snap.data, config_path)
    except SnapshotError as exc:
        raise Refused(str(exc)) from None
    if text is not None:
        document = text.decode("utf-8", "replace")
        try:
            parsed = yaml.safe_load(document)
        except yaml.YAMLError:
            parsed = None
        if is_ml_yaml(parsed):
            kept_parameters = {}
        else:
            try:
                step = load_config(document, config_path).steps.get(old.step)
            except StepError as exc:
                raise Refused(str(exc)) from None
            if step is not None:
                kept_parameters = {k: v for k, v in kept_parameters.items() if k in step.parameters}
                kept_inputs = {k: v for k, v in kept_inputs.items() if k in step.inputs}
    return check_request(snap, directory, config_path, old.step, {**kept_parameters, **parameters},
                         {**kept_inputs, **inputs}, adhoc=True)
