"""The console commands of ``[project.scripts]`` start the same absl programs as
``python -m jaxcolor.<name>``, and ``--help`` lists their flags."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib

import pytest
from conftest import REPO

with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    SCRIPTS = tomllib.load(f)["project"]["scripts"]

FLAGS = {
    "jaxcolor-train": ["--config", "--workdir"],
    "jaxcolor-evaluate": ["--workdir", "--images", "--compare", "--step"],
    "jaxcolor-colorize": ["--workdir", "--out", "--render_size", "--step"],
    "jaxcolor-export": ["--workdir", "--out", "--step", "--platforms"],
    "jaxcolor-serve": ["--model", "--host", "--port", "--max_upload_mb"],
}


def test_every_command_is_declared():
    assert set(SCRIPTS) == set(FLAGS)
    for name, target in SCRIPTS.items():
        assert target == f"jaxcolor.{name.split('-')[1]}:run"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FLAGS))
def test_help_lists_the_flags(name, tmp_path):
    module, function = SCRIPTS[name].split(":")
    commands = [[sys.executable, "-m", module, "--help"]]
    if shutil.which(name):  # installed with this checkout's pyproject (as CI does)
        commands.append([name, "--help"])
    else:  # what the installed launcher does: argv[0] is the command, then the entry point runs
        launcher = (f"import sys; sys.argv = [{name!r}, '--help']; "
                    f"from {module} import {function}; {function}()")
        commands.append([sys.executable, "-c", launcher])
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                                timeout=120)
        assert result.returncode == 0, (command, result.stderr)
        for flag in FLAGS[name]:
            assert flag in result.stdout, (command, flag, result.stdout)
