"""The persistent compilation cache helper: where it goes, and that it can be turned off."""

from __future__ import annotations

import jax
import pytest

from jaxcolor import compile_cache


@pytest.fixture
def restore_jax_config():
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {n: getattr(jax.config, n) for n in names}
    yield
    for n, v in saved.items():
        jax.config.update(n, v)


def test_enable_sets_the_cache_dir_and_env_overrides(tmp_path, monkeypatch, restore_jax_config):
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "from_env"))
    assert compile_cache.enable() == str(tmp_path / "from_env")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "from_env")
    assert compile_cache.enable(str(tmp_path / "explicit")) == str(tmp_path / "explicit")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "explicit")


def test_off_leaves_the_cache_disabled(monkeypatch, restore_jax_config):
    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.enable() is None
    assert jax.config.jax_compilation_cache_dir == before


def test_min_compile_time_defaults_to_a_fifth_of_a_second_unless_jax_variable_is_set(
        tmp_path, monkeypatch, restore_jax_config):
    monkeypatch.delenv(compile_cache.MIN_SECS_ENV, raising=False)
    compile_cache.enable(str(tmp_path))
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.2
    monkeypatch.setenv(compile_cache.MIN_SECS_ENV, "0")
    compile_cache.enable(str(tmp_path))
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
