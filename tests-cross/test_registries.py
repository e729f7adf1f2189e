"""One behavioural suite for every registry: qr_core's two and qr_entropy's sources.

The registries live in two packages that may not import each other, so each has
its own code; this suite holds them to one idiom (see ARCHITECTURE.md, design
note "One registry idiom"). Third-party plugins are real distributions: a
``.dist-info`` folder with ``METADATA`` and ``entry_points.txt`` and a module,
written to a temporary folder on ``sys.path``, so ``importlib.metadata`` finds
them exactly as it finds an installed wheel.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import logging
import pickle
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import _cross_gate
import pytest
from qr_core import (
    AmplifierRegistry,
    ComponentLoadError,
    QRCoreError,
    SignalAmplifier,
    TemperatureStrategy,
    TemperatureStrategyRegistry,
    UnknownComponentError,
)
from qr_entropy import (
    EntropyConfigError,
    EntropySource,
    EntropySourceRegistry,
    FallbackEntropySource,
    QREntropyError,
    SourceLoadError,
    UnknownSourceError,
)

AMPLIFIER = """
from qr_core import SignalAmplifier

class Plugin(SignalAmplifier):
    def amplify_batch(self, block):
        raise NotImplementedError
"""

STRATEGY = """
from qr_core import TemperatureStrategy

class Plugin(TemperatureStrategy):
    def compute_batch(self, logits, shannon_entropy=None):
        raise NotImplementedError
"""

SOURCE = """
from qr_entropy import EntropySource

class Plugin(EntropySource):
    @property
    def name(self):
        return "plugin"

    def get_random_bytes(self, n):
        return bytes(n)
"""


@dataclass(frozen=True)
class Case:
    """What differs between the registries; everything else is the shared idiom."""

    registry: Any
    group: str
    owner: str  # the distribution that declares the built-ins
    title: str  # the kind, as error messages start
    base: type
    plugin_code: str  # a module defining a valid ``Plugin`` class
    root_error: type[Exception]
    unknown_error: type[Exception]
    load_error: type[Exception]
    register_error: type[Exception]


CASES = {
    "amplifiers": Case(
        AmplifierRegistry,
        "qr_core.amplifiers",
        "qr-core",
        "Amplifier",
        SignalAmplifier,
        AMPLIFIER,
        QRCoreError,
        UnknownComponentError,
        ComponentLoadError,
        QRCoreError,
    ),
    "temperature_strategies": Case(
        TemperatureStrategyRegistry,
        "qr_core.temperature_strategies",
        "qr-core",
        "Temperature strategy",
        TemperatureStrategy,
        STRATEGY,
        QRCoreError,
        UnknownComponentError,
        ComponentLoadError,
        QRCoreError,
    ),
    "sources": Case(
        EntropySourceRegistry,
        "qr_entropy.sources",
        "qr-entropy",
        "Entropy source",
        EntropySource,
        SOURCE,
        QREntropyError,
        UnknownSourceError,
        SourceLoadError,
        EntropyConfigError,
    ),
}

_serial = itertools.count()


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    chosen = CASES[request.param]
    chosen.registry.refresh()
    yield chosen
    chosen.registry.refresh()


Install = Callable[..., str]


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: Case) -> Iterator[Install]:
    """Write a distribution declaring entry points in the case's group; return its module name."""
    modules: list[str] = []

    def write(dist: str, names: dict[str, str], code: str | None = None) -> str:
        module = f"cross_plugin_{next(_serial)}"
        root = tmp_path / module
        info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = [f"[{case.group}]"]
        lines += [f"{name} = {target.format(module=module)}" for name, target in names.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        (root / f"{module}.py").write_text(case.plugin_code if code is None else code)
        monkeypatch.syspath_prepend(str(root))
        modules.append(module)
        return module

    yield write
    for module in modules:
        sys.modules.pop(module, None)
    importlib.invalidate_caches()


def _own_entry_points(case: Case) -> dict[str, Any]:
    return {
        ep.name: ep
        for ep in entry_points(group=case.group)
        if ep.dist is not None and ep.dist.name == case.owner
    }


def test_every_builtin_comes_from_its_owners_entry_point(case: Case) -> None:
    own = _own_entry_points(case)
    assert own, f"{case.owner} declares no {case.group} entry point"
    available = case.registry.available()
    for name, ep in own.items():
        # Not registered in process: that would list the module's package, not the distribution.
        assert available[name] == case.owner, (name, available)
        assert case.registry.get(name) is ep.load()


#: Public classes of a registry's base that are not selectable by name: a wrapper.
NOT_SELECTABLE = {FallbackEntropySource}


def test_every_public_concrete_class_of_the_owner_is_declared(case: Case) -> None:
    """With no registration at import, a built-in without an entry point would be unreachable."""
    package = importlib.import_module(case.base.__module__.partition(".")[0])
    public = {
        obj
        for obj in (getattr(package, name) for name in package.__all__)
        if isinstance(obj, type)
        and issubclass(obj, case.base)
        and not inspect.isabstract(obj)
        and obj not in NOT_SELECTABLE
    }
    assert public, f"{package.__name__} exports no concrete {case.base.__name__}"
    declared = {ep.load() for ep in _own_entry_points(case).values()}
    assert public <= declared, f"no {case.group} entry point for {public - declared}"


def test_available_is_a_sorted_mapping_and_imports_nothing(case: Case, install: Install) -> None:
    module = install("cross-lister", {"listed_only": "{module}:Plugin"}, "raise RuntimeError")
    available = case.registry.available()
    assert isinstance(available, dict)
    assert list(available) == sorted(available)
    assert available["listed_only"] == "cross-lister"
    assert module not in sys.modules


def test_unknown_name_error_has_name_available_and_one_message(case: Case) -> None:
    with pytest.raises(case.unknown_error) as info:
        case.registry.get("no_such_component")
    error = info.value
    assert isinstance(error, LookupError)
    assert isinstance(error, case.root_error)
    assert error.name == "no_such_component"  # type: ignore[attr-defined]
    assert error.available == tuple(case.registry.available())  # type: ignore[attr-defined]
    assert str(error) == (
        f"{case.title} 'no_such_component' not found. It is either misspelled or not "
        f"installed. Available: {', '.join(case.registry.available())}"
    )


def test_plugin_is_loaded_when_selected_and_cached(case: Case, install: Install) -> None:
    module = install("cross-plugin", {"cross_ok": "{module}:Plugin"})
    assert module not in sys.modules
    cls = case.registry.get("cross_ok")
    assert issubclass(cls, case.base)
    assert cls.__module__ == module
    assert case.registry.get("cross_ok") is cls
    assert case.registry.available()["cross_ok"] == "cross-plugin"


def test_plugin_that_fails_to_import_raises_the_load_error(case: Case, install: Install) -> None:
    code = case.plugin_code + "\nraise RuntimeError('driver missing')\n"
    module = install("cross-broken", {"cross_broken": "{module}:Plugin"}, code)
    install("cross-fine", {"cross_fine": "{module}:Plugin"})
    with pytest.raises(case.load_error) as info:
        case.registry.get("cross_broken")
    error = info.value
    assert isinstance(error, ImportError)
    assert isinstance(error, case.root_error)
    assert error.name == "cross_broken"
    assert error.distribution == "cross-broken"  # type: ignore[attr-defined]
    assert str(error) == (
        f"{case.title} 'cross_broken' from distribution cross-broken ({module}:Plugin) "
        "failed to load: RuntimeError: driver missing"
    )
    assert isinstance(error.__cause__, RuntimeError)
    assert issubclass(case.registry.get("cross_fine"), case.base)  # the others still load


def test_entry_point_that_is_not_a_subclass_raises_the_load_error(
    case: Case, install: Install
) -> None:
    module = install("cross-wrong", {"cross_wrong": "{module}:THING"}, "THING = 'a string'\n")
    with pytest.raises(case.load_error) as info:
        case.registry.get("cross_wrong")
    assert str(info.value) == (
        f"{case.title} 'cross_wrong' from distribution cross-wrong ({module}:THING) "
        f"is 'a string', not a subclass of {case.base.__name__}"
    )


def test_the_owners_entry_point_wins_a_name_clash(
    case: Case, install: Install, caplog: pytest.LogCaptureFixture
) -> None:
    name, ep = next(iter(_own_entry_points(case).items()))
    install("cross-shadow", {name: "{module}:Plugin"})  # first on sys.path, so seen first
    with caplog.at_level(logging.WARNING):
        assert case.registry.get(name) is ep.load()
    assert case.registry.available()[name] == case.owner
    assert f"{name!r} is declared by both cross-shadow" in caplog.text
    assert f"and {case.owner}" in caplog.text


def test_between_third_parties_the_first_seen_wins(
    case: Case, install: Install, caplog: pytest.LogCaptureFixture
) -> None:
    second = install("cross-second", {"cross_dup": "{module}:Plugin"})
    first = install("cross-first", {"cross_dup": "{module}:Plugin"})  # prepended: seen first
    assert case.registry.get("cross_dup").__module__ == first
    assert f"using {first}:Plugin" in caplog.text
    assert second not in sys.modules


def test_refresh_forgets_the_scan(case: Case, install: Install) -> None:
    assert "cross_late" not in case.registry.available()
    install("cross-late", {"cross_late": "{module}:Plugin"})
    assert "cross_late" not in case.registry.available()  # the scan is cached
    with pytest.raises(case.unknown_error):
        case.registry.get("cross_late")
    case.registry.refresh()
    assert case.registry.available()["cross_late"] == "cross-late"
    assert issubclass(case.registry.get("cross_late"), case.base)


def test_register_in_process(case: Case, install: Install) -> None:
    namespace: dict[str, Any] = {"__name__": "cross_app.plugins"}
    exec(case.plugin_code, namespace)  # a class of an application, in no installed distribution
    plugin = namespace["Plugin"]
    other = type("Other", (plugin,), {})
    install("cross-declared", {"cross_local": "{module}:Plugin"})
    registry = case.registry
    try:
        assert registry.register("cross_local")(plugin) is plugin
        assert registry.get("cross_local") is plugin  # wins over the entry point
        assert registry.available()["cross_local"] == "cross_app"  # its module's package
        assert registry.register("cross_local")(plugin) is plugin  # the same class again: fine
        with pytest.raises(case.register_error, match="'cross_local' is already registered to"):
            registry.register("cross_local")(other)
        registry.refresh()
        assert registry.get("cross_local") is plugin  # refresh keeps it
    finally:
        registry.unregister("cross_local")
    assert registry.get("cross_local").__module__.startswith("cross_plugin_")
    registry.unregister("cross_local")  # nothing registered: no error
    with pytest.raises(case.register_error, match="must subclass"):
        registry.register("cross_int")(int)
    for bad in ("", "has space", "1digit", 7):
        with pytest.raises(case.register_error, match="is not allowed"):
            registry.register(bad)
    assert isinstance(case.register_error(), ValueError)


def test_lookups_and_refresh_take_one_lock(case: Case, install: Install) -> None:
    """A refresh waits for a lookup that is loading a plugin, instead of racing it."""
    gate = "import _cross_gate\n_cross_gate.entered.set()\n_cross_gate.release.wait(120)\n"
    install("cross-slow", {"cross_slow": "{module}:Plugin"}, gate + case.plugin_code)
    _cross_gate.reset()
    found: list[Any] = []
    lookup = threading.Thread(target=lambda: found.append(case.registry.get("cross_slow")))
    refresh = threading.Thread(target=case.registry.refresh)
    lookup.start()
    try:
        assert _cross_gate.entered.wait(120), "the plugin was never imported"
        refresh.start()
        refresh.join(0.5)
        assert refresh.is_alive(), "refresh() ran while a lookup held the registry"
    finally:
        _cross_gate.release.set()
        lookup.join(120)
        refresh.join(120)
    assert not lookup.is_alive()
    assert not refresh.is_alive()
    assert len(found) == 1
    assert issubclass(found[0], case.base)


def test_errors_keep_their_attributes_across_processes(case: Case, install: Install) -> None:
    """vLLM hands errors between processes by pickling them."""
    install("cross-pickled", {"cross_pickled": "{module}:Plugin"}, "raise RuntimeError('x')\n")
    errors = []
    for name in ("no_such_component", "cross_pickled"):
        with pytest.raises((case.unknown_error, case.load_error)) as info:
            case.registry.get(name)
        errors.append(info.value)
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        unknown = isinstance(error, LookupError)
        for attribute in ("name", "available") if unknown else ("name", "distribution"):
            assert getattr(copy, attribute) == getattr(error, attribute), attribute
    assert errors[1].distribution == "cross-pickled"  # type: ignore[attr-defined]
