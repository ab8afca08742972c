"""What `runyard run` checks on the user's side before it uploads a snapshot.

The step, its parameters and inputs are checked against the valohai.yaml (or
ml.yaml) inside the snapshot just made, by the same code the daemon runs, so a
request the daemon would refuse is refused before any upload, naming the
problem. What only the daemon knows (pools, GPUs, the ml.yaml image mapping) it
still checks itself.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from runyard.daemon.mlyaml import STEP_NAME, is_ml_yaml, prepare_ml
from runyard.daemon.snapshots import Snapshot, SnapshotError, read_archive_file
from runyard.daemon.steps import StepError, load_config, prepare_step

ML_YAML = "ml.yaml"


class Refused(Exception):
    """The request cannot run as given; the message says why and what to do."""


def collect_parameters(pairs: list[tuple[str, str]]) -> dict[str, str | list[str]]:
    """-p NAME=VALUE pairs: once gives the value (split at a `multiple` parameter's separator by the
    daemon); repeated, each is one value of the list, as written."""
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        values.setdefault(name, []).append(value)
    return {name: vs[0] if len(vs) == 1 else vs for name, vs in values.items()}


def check_request(snap: Snapshot, directory: Path, config_path: str, step: str,
                  parameters: dict[str, str | list[str]], inputs: dict[str, list[str]], *,
                  adhoc: bool) -> tuple[str, ...]:
    """Refused if the step cannot run with these values; else what the user should know about it."""
    try:
        text = read_archive_file(snap.data, config_path)
        other_config = config_path != ML_YAML and read_archive_file(snap.data, ML_YAML) is not None
    except SnapshotError as exc:
        raise Refused(str(exc)) from None
    what = "the working tree" if adhoc else f"commit {(snap.commit or '')[:12]}"
    if text is None:
        hint = ""
        if other_config:
            hint = f": it has an {ML_YAML}, run it with --config-file {ML_YAML}"
        elif not adhoc and (directory / config_path).is_file():
            hint = ": it is in the working tree, not in the commit; commit it or use --adhoc"
        raise Refused(f"{what} has no {config_path}{hint}")
    document = text.decode("utf-8", "replace")
    try:
        try:
            parsed = yaml.safe_load(document)
        except yaml.YAMLError:
            parsed = None  # load_config below says where
        if is_ml_yaml(parsed):
            if step not in (STEP_NAME, ""):
                raise StepError(f"{config_path} is an ml.yaml: its one step is {STEP_NAME!r}, not {step!r}")
            prepare_ml(document, None, parameters, inputs, config_path)
            return ()
        return prepare_step(load_config(document, config_path), step, parameters, inputs).notes
    except StepError as exc:
        raise Refused(str(exc)) from None
