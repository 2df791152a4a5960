"""The in-database part runs in the server's Python: it may import the standard library only."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
IN_DATABASE = ["pglocalai", "pglocalai.errors", "pglocalai.protocol", "pglocalai.client",
               "pglocalai.pg.functions"]

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
before = set(sys.modules)
for name in json.loads(sys.argv[2]):
    __import__(name)
foreign = sorted({m.split(".")[0] for m in set(sys.modules) - before}
                 - set(sys.stdlib_module_names) - {"pglocalai"})
print(json.dumps(foreign))
"""


@pytest.mark.parametrize("python", ["venv", "system"])
def test_in_database_modules_import_only_the_standard_library(python: str) -> None:
    exe = sys.executable if python == "venv" else shutil.which("python3", path="/usr/bin")
    assert exe, "the system python3 (the one PL/Python embeds) is missing"
    out = subprocess.run([exe, "-I", "-c", PROBE, str(SRC), json.dumps(IN_DATABASE)],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
