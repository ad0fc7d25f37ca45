"""Scratch copies of the project (e2e tests, benchmarks, the validation run) run their own code."""

from __future__ import annotations

import sys
from pathlib import Path

from dial.workspace import run, tool_env


def test_a_copy_imports_its_own_dial_not_the_installed_one(tmp_path):
    package = tmp_path / "src" / "dial"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("WHERE = 'copy'\n")
    printed = run([sys.executable, "-c", "import dial; print(dial.WHERE, dial.__file__)"], tmp_path).stdout.split()
    assert printed == ["copy", str((package / "__init__.py").resolve())]


def test_only_a_project_copy_gets_an_import_path(tmp_path):
    assert "PYTHONPATH" not in tool_env(tmp_path) or tool_env(tmp_path)["PYTHONPATH"] == tool_env()["PYTHONPATH"]
    (tmp_path / "src" / "dial").mkdir(parents=True)
    assert tool_env(tmp_path)["PYTHONPATH"].split(":")[0] == str((tmp_path / "src").resolve())
    assert Path(tool_env()["PATH"].split(":")[0]) == Path(sys.executable).parent
