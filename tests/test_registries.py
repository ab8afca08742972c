"""Images from a registry that needs a login, pulled on every host with the configured credentials.

The registry is a real one (Debian's docker-registry: the Distribution registry, registry:2's code)
with htpasswd basic auth; the image is pushed to it with the docker CLI and removed locally, so the
daemon must pull it, once from a pool host over SSH and once on this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Daemon, make_repo, run_cli, step_yaml
from .pool import free_port, start_lone_host

PASSWORD = "pw-Zq7-registry-secret"
WRONG = "pw-wrong-guess-9941"


def _tiny_image_tar(root: Path) -> Path:
    """A 2 MiB image: dash and the C library, enough for a step's `/bin/sh -c`."""
    fs = root / "fs"
    for name, target in [("/bin/dash", "bin/sh"), ("/lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libc.so.6"),
                         ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2")]:
        (fs / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(name, fs / target)
    tar = root / "tiny.tar"
    subprocess.run(["tar", "-C", str(fs), "-cf", str(tar), "."], check=True)
    return tar


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[int]:
    """A registry on 127.0.0.1:<port> that lets in user "lab" with PASSWORD, holding lab/tiny:1."""
    if shutil.which("docker-registry") is None or shutil.which("htpasswd") is None:
        pytest.fail("needs Debian's docker-registry and apache2-utils (htpasswd): scripts/test installs them")
    root = tmp_path / "registry"
    root.mkdir()
    port = free_port()
    htpasswd = subprocess.run(["htpasswd", "-Bbn", "lab", PASSWORD], check=True, capture_output=True, text=True)
    (root / "htpasswd").write_text(htpasswd.stdout)
    (root / "config.yml").write_text(textwrap.dedent(f"""\
        version: 0.1
        log: {{level: info}}
        storage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}
        http: {{addr: "127.0.0.1:{port}"}}
        auth: {{htpasswd: {{realm: runyard-test, path: {root / 'htpasswd'}}}}}
        """))
    process = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:  # the line that says it listens: an event, not a sleep
        if "listening on" in line:
            break
    else:
        raise AssertionError("docker-registry did not start")
    stream = process.stderr
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()
    pusher = {**os.environ, "DOCKER_CONFIG": str(root / "pusher")}
    image = f"127.0.0.1:{port}/lab/tiny:1"
    try:
        subprocess.run(["docker", "import", str(_tiny_image_tar(root)), image], check=True, capture_output=True)
        subprocess.run(["docker", "login", "-u", "lab", "--password-stdin", f"127.0.0.1:{port}"], env=pusher,
                       input=PASSWORD, check=True, capture_output=True, text=True)
        subprocess.run(["docker", "push", image], env=pusher, check=True, capture_output=True)
        subprocess.run(["docker", "rmi", image], check=True, capture_output=True)
        yield port
    finally:
        subprocess.run(["docker", "rmi", "-f", image, f"localhost:{port}/lab/tiny:1"], capture_output=True)
        process.kill()
        process.wait()


@pytest.mark.slow
def test_private_images_are_pulled_with_their_login_on_every_host_and_the_secret_shows_nowhere(
        registry: int, daemon_factory: type[Daemon], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = registry
    password_file = tmp_path / "registry-password"
    password_file.write_text(WRONG + "\n")
    password_file.chmod(0o644)
    # This machine's daemon user logged in with `docker login localhost:<port>` (its own config.json).
    docker_config = tmp_path / "daemon-docker"
    subprocess.run(["docker", "login", "-u", "lab", "--password-stdin", f"localhost:{port}"],
                   env={**os.environ, "DOCKER_CONFIG": str(docker_config)}, input=PASSWORD, check=True,
                   capture_output=True, text=True)
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config))
    (tmp_path / "hosts").mkdir()
    host, _key, known = start_lone_host(tmp_path / "hosts")
    daemon = daemon_factory(extra_config=textwrap.dedent(f"""\
        [ssh]
        known_hosts = "{known}"
        [registries."127.0.0.1:{port}"]
        username = "lab"
        password_file = "{password_file}"
        """) + host.config(pool="remote"))
    write_config = daemon.write_config

    def pulling_config() -> Path:  # the suite's daemons never pull; these must
        path = write_config()
        path.write_text(path.read_text().replace('pull = "never"', 'pull = "missing"'))
        return path

    daemon.write_config = pulling_config  # type: ignore[method-assign]
    daemon.start()
    assert f"{password_file} is readable by other users" in daemon.log_text()
    password_file.chmod(0o600)
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("hello", "echo hello from a private image")})
    try:
        def run(image: str, pool: str) -> subprocess.CompletedProcess[str]:
            return run_cli(daemon, "run", "hello", "--image", image, "--pool", pool, "--watch", "--json", cwd=repo)

        def final(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
            return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]  # after the log

        # A wrong password: the pull is refused, and the reason names the registry, not the secret.
        refused = run(f"127.0.0.1:{port}/lab/tiny:1", "remote")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        view = final(refused)
        assert (view["status"], view["reason"]) == ("error", "image-missing")
        log = run_cli(daemon, "logs", str(view["id"])).stdout
        assert "could not be pulled" in log and "unauthorized" in log.lower()

        # The password file is read at each pull: fixed, the next run on the pool host pulls.
        password_file.write_text(PASSWORD + "\n")
        remote = run(f"127.0.0.1:{port}/lab/tiny:1", "remote")
        assert remote.returncode == 0, remote.stdout + remote.stderr
        assert final(remote)["host"] == host.name
        assert "hello from a private image" in run_cli(daemon, "logs", str(final(remote)["id"])).stdout

        # On this machine, the registry's other name has no [registries] entry: the login comes
        # from the daemon user's Docker config.json.
        local = run(f"localhost:{port}/lab/tiny:1", "local")
        assert local.returncode == 0, local.stdout + local.stderr
        assert final(local)["host"] == "local"

        shown = [refused.stdout, refused.stderr, remote.stdout, remote.stderr, local.stdout, local.stderr, log,
                 run_cli(daemon, "list", "--json").stdout, run_cli(daemon, "info", str(view["id"]), "--json").stdout,
                 daemon.log_text()]
        for text in shown:
            assert PASSWORD not in text and WRONG not in text
    finally:
        host.kill()


@pytest.mark.parametrize(("image", "registry"), [
    ("python:3.11", "docker.io"), ("lab/private:1", "docker.io"), ("docker.io/lab/x", "docker.io"),
    ("index.docker.io/lab/x", "docker.io"), ("ghcr.io/org/img:2", "ghcr.io"),
    ("localhost:5000/x", "localhost:5000"), ("Registry.Example.org:5000/a/b@sha256:00", "registry.example.org:5000"),
])
def test_an_images_registry_is_named_as_docker_names_it(image: str, registry: str) -> None:
    from runyard.daemon.registries import normal, registry_of

    assert registry_of(image) == registry
    assert normal("https://index.docker.io/v1/") == "docker.io"  # how config.json keys Docker Hub
