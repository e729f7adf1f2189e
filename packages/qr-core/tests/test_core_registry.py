"""qr_core's registries: what is particular to them.

The behaviour every registry shares (entry points only, errors, clashes,
refresh, in-process registration, locking) is tested once for qr_core's and
qr_entropy's registries together, in tests-cross/test_registries.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import EntryPoint, entry_points

import pytest
import qr_core._registry as registry_module
from qr_core import (
    AmplifierRegistry,
    EDTTemperatureStrategy,
    FixedTemperatureStrategy,
    TemperatureStrategyRegistry,
    ZScoreMeanAmplifier,
)

GROUP = "qr_core.amplifiers"


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[EntryPoint]]:
    # Installing a real distribution per test is too slow here (tests-cross does it);
    # extra entry points are added to the installed ones.
    declared: list[EntryPoint] = []

    def more_entry_points(*, group: str) -> list[EntryPoint]:
        return [*entry_points(group=group), *(ep for ep in declared if ep.group == group)]

    monkeypatch.setattr(registry_module, "entry_points", more_entry_points)
    AmplifierRegistry.refresh()
    yield declared
    AmplifierRegistry.refresh()


def test_builtins_are_qr_cores_entry_points() -> None:
    AmplifierRegistry.refresh()
    TemperatureStrategyRegistry.refresh()
    assert TemperatureStrategyRegistry.available() == {"edt": "qr-core", "fixed": "qr-core"}
    assert AmplifierRegistry.available()["zscore_mean"] == "qr-core"
    assert AmplifierRegistry.available()["randomized_pit"] == "qr-core"
    assert AmplifierRegistry.get("zscore_mean") is ZScoreMeanAmplifier
    assert TemperatureStrategyRegistry.get("edt") is EDTTemperatureStrategy
    assert (ZScoreMeanAmplifier.name, FixedTemperatureStrategy.name) == ("zscore_mean", "fixed")


def test_registries_keep_separate_tables() -> None:
    assert "zscore_mean" not in TemperatureStrategyRegistry.available()
    assert "edt" not in AmplifierRegistry.available()


def test_plugin_from_an_entry_point_is_listed_loaded_named_and_built(
    plugins: list[EntryPoint],
) -> None:
    plugins.append(EntryPoint("half", "_qr_core_plugin:HalfAmplifier", GROUP))
    assert list(AmplifierRegistry.available()) == ["half", "randomized_pit", "zscore_mean"]
    amp = AmplifierRegistry.build("half", level=0.25, population_std=1.0)
    assert amp.amplify(b"\x01\x02").u == 0.25
    assert AmplifierRegistry.get("half") is type(amp)  # loaded once, cached
    assert amp.name == "half"  # a plugin class without a name gets its entry-point name


def test_register_names_the_class() -> None:
    class Local(ZScoreMeanAmplifier):
        name = ""

    try:
        assert AmplifierRegistry.register("local_z")(Local) is Local
        assert Local.name == "local_z"
        assert isinstance(AmplifierRegistry.build("local_z"), Local)
    finally:
        AmplifierRegistry.unregister("local_z")
    assert "local_z" not in AmplifierRegistry.available()
