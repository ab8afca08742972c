"""Credentials for pulling images from registries that need a login.

``[registries."HOST"]`` in the config names a username and a file holding the password (or token);
a registry without such an entry is looked up in the daemon user's Docker ``config.json``
(``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``: what ``docker login`` writes), so a
lab that already logged the daemon's user in needs nothing more. Every host's engine is sent the
credentials with the pull (the engine on a pool host never sees a file of this machine).

Secrets: the password is read when a pull needs it, from a file the admin named, and goes only
into the pull request's X-Registry-Auth header. It is never logged, never in an error message,
an event or a view; errors name the registry and the file, never what the file holds.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

DOCKER_HUB: Final = "docker.io"
_HUB_ALIASES: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
_REGISTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,5})?")


class RegistryError(Exception):
    """A registry's credentials cannot be had; says which registry and why, never a secret."""


class RegistrySection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    username: str
    # A file only the daemon's user can read, holding the password or access token (one line).
    password_file: str


@dataclass(frozen=True, slots=True)
class Login:
    registry: str
    username: str
    password: str = ""
    identity_token: str = ""

    def header_auth(self) -> dict[str, str]:
        """What aiodocker turns into the X-Registry-Auth header of a pull."""
        if self.identity_token:
            return {"identitytoken": self.identity_token, "serveraddress": self.registry}
        return {"username": self.username, "password": self.password, "serveraddress": self.registry}

    def __repr__(self) -> str:  # a stray log line or traceback shows no secret
        return f"Login(registry={self.registry!r}, username={self.username!r})"


def check(registries: dict[str, RegistrySection]) -> None:
    """Raise ValueError naming a [registries] key that is not a registry host (``host[:port]``)."""
    for name, section in registries.items():
        if not _REGISTRY_NAME.fullmatch(name) or len(name) > 253:
            raise ValueError(f'registries."{name}": not a registry host name like "ghcr.io" or '
                             '"registry.example.org:5000"')
        if not section.username:
            raise ValueError(f'registries."{name}".username: must not be empty')
        if not section.password_file:
            raise ValueError(f'registries."{name}".password_file: must name a file')


def registry_of(image: str) -> str:
    """The registry an image reference pulls from, as Docker decides it."""
    first, slash, _rest = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return normal(first)
    return DOCKER_HUB


def normal(registry: str) -> str:
    name = registry.lower()
    for prefix in ("https://", "http://"):
        name = name.removeprefix(prefix)
    name = name.split("/", 1)[0]  # config.json keys Docker Hub as https://index.docker.io/v1/
    return DOCKER_HUB if name in _HUB_ALIASES else name


def pullable(image: str) -> str:
    """The reference to send with credentials: one that names its registry (aiodocker needs it)."""
    first, slash, _rest = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"{DOCKER_HUB}/{image}" if slash else f"{DOCKER_HUB}/library/{image}"


class Registries:
    def __init__(self, sections: dict[str, RegistrySection], docker_config: Path | None = None) -> None:
        self.sections = {normal(name): section for name, section in sections.items()}
        self.docker_config = docker_config if docker_config is not None else default_docker_config()

    def login_for(self, image: str) -> Login | None:
        """The credentials to pull ``image`` with, or None to pull without any."""
        registry = registry_of(image)
        section = self.sections.get(registry)
        if section is not None:
            return Login(registry, section.username, _read_password(registry, section.password_file))
        return _from_docker_config(self.docker_config, registry)


def default_docker_config() -> Path:
    folder = os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
    return Path(folder) / "config.json"


def _read_password(registry: str, path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            data = f.read(64 * 1024)
    except OSError as exc:
        raise RegistryError(f'registries."{registry}": cannot read password_file {path}: '
                            f"{exc.strerror or type(exc).__name__}") from None
    password = data.decode("utf-8", "replace").strip("\r\n")
    if not password:
        raise RegistryError(f'registries."{registry}": password_file {path} is empty')
    return password


def _from_docker_config(path: Path, registry: str) -> Login | None:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read Docker's {path} for the credentials of {registry}: "
                            f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if not isinstance(key, str) or not isinstance(entry, dict) or normal(key) != registry:
            continue
        token = entry.get("identitytoken")
        if isinstance(token, str) and token:
            return Login(registry, "", identity_token=token)
        encoded = entry.get("auth")
        if isinstance(encoded, str) and encoded:
            try:
                username, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise RegistryError(f"Docker's {path}: the entry for {registry} is not base64 of user:password")
            return Login(registry, username, password)
        user, secret = entry.get("username"), entry.get("password")
        if isinstance(user, str) and isinstance(secret, str) and user:
            return Login(registry, user, secret)
    return None


def exposed_password_files(registries: dict[str, RegistrySection]) -> list[str]:
    """A warning for each password file that users other than the daemon's could read."""
    warnings = []
    for name, section in registries.items():
        try:
            mode = os.stat(section.password_file).st_mode & 0o777
        except OSError:
            continue  # said at the first pull that needs it, naming the file
        if mode & 0o077:
            warnings.append(f'registries."{name}": {section.password_file} is readable by other users '
                            f"(mode {mode:04o}): chmod 600 {section.password_file}")
    return warnings
