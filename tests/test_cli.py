"""The one start-up of the commands (``cli.run_app``): expected errors as one line with the
command's status, absl logging at WARNING unless asked, ``--help`` exiting 0, the compilation
cache on; and the cache helper: where it goes, and that it can be turned off."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import pytest

from jaxcolor import cli

# A command as small as possible: one flag, errors on demand, a chatty library logger (as Orbax).
APP = """
import logging, os, sys
from jaxcolor.cli import run_app

def define_flags():
    from absl import flags
    flags.DEFINE_string("fail", None, "value: a ValueError; bug: a RuntimeError.")

def main(argv):
    from absl import flags
    logging.getLogger("orbax").info("chatty library")
    if flags.FLAGS.fail == "value":
        raise ValueError("no such run")
    if flags.FLAGS.fail == "bug":
        raise RuntimeError("a bug")
    if os.environ.get("APP_CACHE"):
        import jax
        print("cache", jax.config.jax_compilation_cache_dir)
    print("done")

run_app(main, define_flags, error_status=int(os.environ.get("APP_STATUS", "1")),
        compile_cache=bool(os.environ.get("APP_CACHE")))
"""


def _app(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", APP, *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def test_expected_errors_end_with_one_line_and_the_commands_status():
    result = _app("--fail=value", APP_STATUS="2")
    assert result.returncode == 2 and result.stderr.strip() == "error: no such run", result
    bug = _app("--fail=bug")  # anything else keeps its traceback
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "RuntimeError: a bug" in bug.stderr


def test_logging_is_quiet_unless_verbosity_is_given_and_help_exits_0():
    quiet = _app()
    assert quiet.returncode == 0 and quiet.stdout == "done\n" and quiet.stderr == "", quiet
    assert "chatty library" in _app("--verbosity=0").stderr
    shown = _app("--help")
    assert shown.returncode == 0 and "--fail" in shown.stdout, shown


def test_run_app_turns_the_compilation_cache_on(tmp_path):
    result = _app(APP_CACHE="1", **{cli.COMPILE_CACHE_ENV: str(tmp_path)})
    assert result.returncode == 0 and f"cache {tmp_path}\n" in result.stdout, result


@pytest.fixture
def restore_jax_config():
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {n: getattr(jax.config, n) for n in names}
    yield
    for n, v in saved.items():
        jax.config.update(n, v)


def test_enable_sets_the_cache_dir_and_env_overrides(tmp_path, monkeypatch, restore_jax_config):
    monkeypatch.setenv(cli.COMPILE_CACHE_ENV, str(tmp_path / "from_env"))
    assert cli.enable_compile_cache() == str(tmp_path / "from_env")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "from_env")
    assert cli.enable_compile_cache(str(tmp_path / "explicit")) == str(tmp_path / "explicit")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "explicit")


def test_off_leaves_the_cache_disabled(monkeypatch, restore_jax_config):
    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv(cli.COMPILE_CACHE_ENV, "off")
    assert cli.enable_compile_cache() is None
    assert jax.config.jax_compilation_cache_dir == before


def test_min_compile_time_defaults_to_a_fifth_of_a_second_unless_jax_variable_is_set(
        tmp_path, monkeypatch, restore_jax_config):
    monkeypatch.delenv(cli.MIN_COMPILE_SECS_ENV, raising=False)
    cli.enable_compile_cache(str(tmp_path))
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.2
    monkeypatch.setenv(cli.MIN_COMPILE_SECS_ENV, "0")
    cli.enable_compile_cache(str(tmp_path))
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
