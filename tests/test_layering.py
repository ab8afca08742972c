"""The layering holds, checked on real imports in fresh interpreters (as harlequin checks its core).

protocol imports neither daemon nor tui; daemon never imports Textual; tui talks to
the daemon only through protocol.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def loaded_after(module: str) -> set[str]:
    code = (f"import sys, json; import {module}, pkgutil, importlib\n"
            f"pkg = sys.modules[{module!r}]\n"
            "for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):\n"
            "    importlib.import_module(info.name)\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


@pytest.mark.parametrize(("package", "forbidden"), [
    ("runyard.protocol", ("runyard.daemon", "runyard.tui", "runyard.cli", "textual")),
    ("runyard.daemon", ("textual", "runyard.tui", "runyard.cli", "plotext")),
    ("runyard.tui", ("runyard.daemon", "runyard.cli", "aiodocker", "asyncssh", "aiosqlite")),
])
def test_package_never_imports(package: str, forbidden: tuple[str, ...]) -> None:
    loaded = loaded_after(package)
    leaks = sorted(m for m in loaded for f in forbidden if m == f or m.startswith(f + "."))
    assert not leaks, f"{package} pulls in {leaks}"
