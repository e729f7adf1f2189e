"""Registries: decorator built-ins, lazily scanned entry points, clear errors."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import EntryPoint

import pytest
import qr_core._registry as registry_module
from qr_core import (
    AmplifierRegistry,
    QRCoreError,
    SignalAmplifier,
    TemperatureStrategyRegistry,
    UnknownComponentError,
    ZScoreMeanAmplifier,
)

GROUP = "qr_core.amplifiers"


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[EntryPoint]]:
    # Installing a real distribution per test is too slow; the metadata lookup is the only fake.
    declared: list[EntryPoint] = []
    scans = {"count": 0}

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        scans["count"] += 1
        return [ep for ep in declared if ep.group == group]

    monkeypatch.setattr(registry_module, "entry_points", fake_entry_points)
    AmplifierRegistry.clear_cache()
    yield declared
    AmplifierRegistry.clear_cache()


def test_installed_entry_points_of_qr_core_are_found() -> None:
    AmplifierRegistry.clear_cache()
    assert {"randomized_pit", "zscore_mean"} <= set(
        AmplifierRegistry._scan()
    )  # qr-core's pyproject
    assert TemperatureStrategyRegistry.available() == ["edt", "fixed"]


def test_plugin_from_an_entry_point_is_listed_loaded_and_built(plugins: list[EntryPoint]) -> None:
    plugins.append(EntryPoint("half", "_qr_core_plugin:HalfAmplifier", GROUP))
    assert AmplifierRegistry.available() == ["half", "randomized_pit", "zscore_mean"]
    amp = AmplifierRegistry.build("half", level=0.25, population_std=1.0)
    assert amp.amplify(b"\x01\x02").u == 0.25
    assert AmplifierRegistry.get("half") is type(amp)  # loaded once, cached


def test_builtin_wins_over_an_entry_point_of_the_same_name(plugins: list[EntryPoint]) -> None:
    plugins.append(EntryPoint("zscore_mean", "_qr_core_plugin:HalfAmplifier", GROUP))
    assert AmplifierRegistry.get("zscore_mean") is ZScoreMeanAmplifier


def test_duplicate_entry_point_names_keep_the_first(
    plugins: list[EntryPoint], caplog: pytest.LogCaptureFixture
) -> None:
    plugins.append(EntryPoint("half", "_qr_core_plugin:HalfAmplifier", GROUP))
    plugins.append(EntryPoint("half", "elsewhere:Other", GROUP))
    assert AmplifierRegistry.get("half").__name__ == "HalfAmplifier"
    assert "declared twice" in caplog.text


def test_unknown_name_lists_what_is_available(plugins: list[EntryPoint]) -> None:
    plugins.append(EntryPoint("half", "_qr_core_plugin:HalfAmplifier", GROUP))
    with pytest.raises(
        UnknownComponentError,
        match=r"'nope' not found.*Available: half, randomized_pit, zscore_mean",
    ):
        AmplifierRegistry.get("nope")
    with pytest.raises(LookupError):
        TemperatureStrategyRegistry.build("nope")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("no_such_module_qr:Thing", "failed to load: ModuleNotFoundError"),
        ("_qr_core_plugin:NotAnAmplifier", "is not a subclass of SignalAmplifier"),
    ],
)
def test_broken_entry_point_fails_when_selected(
    plugins: list[EntryPoint], value: str, fragment: str
) -> None:
    plugins.append(EntryPoint("broken", value, GROUP))
    assert "broken" in AmplifierRegistry.available()  # listing does not import it
    with pytest.raises(
        QRCoreError, match="amplifier 'broken' from an unknown distribution"
    ) as info:
        AmplifierRegistry.get("broken")
    assert fragment in str(info.value)


def test_register_checks_the_base_class_and_name_clashes() -> None:
    with pytest.raises(QRCoreError, match="must subclass SignalAmplifier"):
        AmplifierRegistry.register("bad")(int)

    class Other(SignalAmplifier):
        def amplify_batch(self, block):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    with pytest.raises(QRCoreError, match="already registered to ZScoreMeanAmplifier"):
        AmplifierRegistry.register("zscore_mean")(Other)
    assert AmplifierRegistry.register("zscore_mean")(ZScoreMeanAmplifier) is ZScoreMeanAmplifier
