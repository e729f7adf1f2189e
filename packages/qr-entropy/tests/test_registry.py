"""The qr_entropy.sources registry, with a real third-party distribution installed.

The plugin under tests/plugins/qr-entropy-test-plugin is built and installed
with ``uv pip install --no-deps --target`` into a temporary directory that is
put on sys.path for this module only, so no pre-installed plugin is needed.
The behaviour every registry shares (errors, clashes, refresh, in-process
registration, locking) is tested once for qr_core's and qr_entropy's registries
together, in tests-cross/test_registries.py.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from qr_entropy import (
    EntropySettings,
    EntropySourceRegistry,
    FallbackEntropySource,
    MockUniformSource,
    SourceLoadError,
    SystemEntropySource,
    TimingNoiseSource,
    UnknownSourceError,
    build_entropy_source,
)

PLUGIN_DIR = Path(__file__).parent / "plugins" / "qr-entropy-test-plugin"


def _install_command(target: Path) -> list[str]:
    uv = shutil.which("uv")
    if uv is not None:
        return [uv, "pip", "install", "--offline", "--no-deps", "--target", str(target)]
    return [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target)]


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    target = tmp_path_factory.mktemp("plugin-site")
    result = subprocess.run(
        [*_install_command(target), str(PLUGIN_DIR)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stderr
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    EntropySourceRegistry.refresh()
    yield target
    sys.path.remove(str(target))
    for module in [m for m in sys.modules if m.startswith("qr_entropy_test_plugin")]:
        del sys.modules[module]
    importlib.invalidate_caches()
    EntropySourceRegistry.refresh()


def test_builtins_are_qr_entropys_entry_points(fresh_registry: None) -> None:
    assert EntropySourceRegistry.get("system") is SystemEntropySource
    assert EntropySourceRegistry.get("timing_noise") is TimingNoiseSource
    assert EntropySourceRegistry.get("mock_uniform") is MockUniformSource
    available = EntropySourceRegistry.available()
    for name in ("system", "timing_noise", "mock_uniform"):
        assert available[name] == "qr-entropy"


def test_entry_point_discovery_with_an_installed_plugin(installed_plugin: Path) -> None:
    available = EntropySourceRegistry.available()
    assert available["plugin_counter"] == "qr-entropy-test-plugin"
    source_cls = EntropySourceRegistry.get("plugin_counter")
    assert source_cls.__module__ == "qr_entropy_test_plugin"
    assert EntropySourceRegistry.get("plugin_counter") is source_cls  # cached
    source = EntropySourceRegistry.build("plugin_counter", EntropySettings(max_request_bytes=99))
    assert source.max_request_bytes == 99
    fetched = source.fetch(40)
    assert len(fetched.data) == 40
    assert fetched.provenance.source == "plugin_counter"


def test_builtin_takes_precedence_over_a_plugin_of_the_same_name(installed_plugin: Path) -> None:
    assert EntropySourceRegistry.get("system") is SystemEntropySource
    assert EntropySourceRegistry.available()["system"] == "qr-entropy"
    assert EntropySourceRegistry.build("system").name == "system"


def test_broken_plugin_fails_loudly_when_selected(installed_plugin: Path) -> None:
    assert "plugin_broken" in EntropySourceRegistry.available()  # listing does not import it
    with pytest.raises(SourceLoadError) as info:
        EntropySourceRegistry.get("plugin_broken")
    message = str(info.value)
    assert "from distribution qr-entropy-test-plugin" in message
    assert "failed to load: ImportError" in message
    assert "imaginary-qrng-driver" in message
    assert isinstance(info.value.__cause__, ImportError)
    # a broken plugin does not break the others
    assert EntropySourceRegistry.get("plugin_counter").__name__ == "CounterSource"


def test_entry_point_that_is_not_a_source(installed_plugin: Path) -> None:
    with pytest.raises(SourceLoadError, match="not a subclass of EntropySource"):
        EntropySourceRegistry.get("plugin_not_a_source")


def test_plugin_selected_through_settings(installed_plugin: Path) -> None:
    settings = EntropySettings(entropy_source_type="plugin_counter", fallback_mode="error")
    source = build_entropy_source(settings)
    assert source.name == "plugin_counter"


def test_build_entropy_source_wraps_in_fallback() -> None:
    source = build_entropy_source(
        EntropySettings(entropy_source_type="mock_uniform", mock_seed=1, fallback_mode="system")
    )
    assert isinstance(source, FallbackEntropySource)
    assert isinstance(source.primary, MockUniformSource)
    assert isinstance(source.fallback, SystemEntropySource)
    assert source.primary.seed == 1


def test_build_entropy_source_error_mode_has_no_fallback() -> None:
    source = build_entropy_source(
        EntropySettings(entropy_source_type="timing_noise", fallback_mode="error")
    )
    assert isinstance(source, TimingNoiseSource)


def test_build_entropy_source_same_fallback_is_not_wrapped() -> None:
    assert isinstance(build_entropy_source(EntropySettings()), SystemEntropySource)


def test_build_entropy_source_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QR_ENTROPY_SOURCE_TYPE", "mock_uniform")
    monkeypatch.setenv("QR_FALLBACK_MODE", "error")
    monkeypatch.setenv("QR_MOCK_SEED", "12")
    source = build_entropy_source()
    assert isinstance(source, MockUniformSource)
    assert source.fetch(8).data == MockUniformSource(seed=12).fetch(8).data
    assert isinstance(EntropySourceRegistry.build("system"), SystemEntropySource)


def test_unknown_primary_fails_at_build() -> None:
    with pytest.raises(UnknownSourceError, match="'nope' not found"):
        build_entropy_source(EntropySettings(entropy_source_type="nope"))
