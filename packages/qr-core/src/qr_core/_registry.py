"""Name-to-class registries of qr_core, found through entry points.

Every component, built-in or third-party, is declared as an entry point of its
registry's group (qr-core declares its own built-ins in its pyproject), so there
is one way in. The entry points are scanned once, lazily, on the first lookup
that needs them, and each is imported only when it is selected, so an
uninstalled or broken plugin costs nothing until someone asks for it. When two
distributions declare one name, qr-core's own entry point wins, else the first
seen, with a warning. `ComponentRegistry.register` adds a class in process (tests,
or an application that cannot ship an entry point); such a class wins over
entry points. qr_entropy's source registry follows the same idiom (see
ARCHITECTURE.md, design note "One registry idiom").
"""

from __future__ import annotations

import inspect
import logging
import re
import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar, Generic, TypeVar, cast

from qr_core._errors import ComponentLoadError, QRCoreError, UnknownComponentError

__all__ = ["ComponentRegistry"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
C = TypeVar("C", bound=type)

#: The distribution whose entry points win a name clash in qr_core's groups.
OWN_DISTRIBUTION = "qr-core"
_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _canonical(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _distribution_of(entry_point: EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return str(dist.name) if dist is not None else "<unknown distribution>"


class ComponentRegistry(Generic[T]):
    """Base of :class:`AmplifierRegistry` and :class:`TemperatureStrategyRegistry`.

    Subclasses set :attr:`group` (the entry-point group), :attr:`kind` (used in
    messages) and :attr:`base` (the ABC every component must subclass). Each
    subclass gets its own tables and its own lock.

    A component's ``name`` is the name it is registered under: `register` sets
    it, and an entry-point class that has none gets its entry-point name.
    """

    group: ClassVar[str]
    kind: ClassVar[str]
    base: ClassVar[type[Any]]
    _registered: ClassVar[dict[str, type[Any]]]
    _loaded: ClassVar[dict[str, type[Any]]]
    _entry_points: ClassVar[dict[str, EntryPoint] | None]
    _lock: ClassVar[threading.RLock]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._registered = {}
        cls._loaded = {}
        cls._entry_points = None
        cls._lock = threading.RLock()

    @classmethod
    def _title(cls) -> str:
        return cls.kind[:1].upper() + cls.kind[1:]

    @classmethod
    def register(cls, name: str) -> Callable[[C], C]:
        """Class decorator that registers a component in this process under ``name``.

        For tests, and for applications that cannot ship an entry point; a
        distribution declares an entry point instead. A class registered here
        wins over an entry point of the same name until `unregister`.

        Args:
            name: The name configuration uses to select the component.

        Returns:
            A decorator that registers the class, sets its ``name`` and returns it unchanged.

        Raises:
            QRCoreError: The name is not identifier-like, the class does not
                subclass the registry's base, or the name is already registered
                to another class.
        """
        if not isinstance(name, str) or not _NAME_PATTERN.match(name):
            msg = (
                f"{cls.kind} name {name!r} is not allowed; use letters, digits, '_', '.', '-' "
                f"starting with a letter or '_'"
            )
            raise QRCoreError(msg)

        def decorator(component: C) -> C:
            if not (isinstance(component, type) and issubclass(component, cls.base)):
                msg = f"{cls.kind} {name!r} must subclass {cls.base.__name__}; got {component!r}"
                raise QRCoreError(msg)
            with cls._lock:
                taken = cls._registered.get(name)
                if taken is not None and taken is not component:
                    msg = (
                        f"{cls.kind} name {name!r} is already registered to "
                        f"{taken.__module__}.{taken.__qualname__}"
                    )
                    raise QRCoreError(msg)
                cast(Any, component).name = name
                cls._registered[name] = component
            return component

        return decorator

    @classmethod
    def unregister(cls, name: str) -> None:
        """Remove a class registered in process under ``name`` (no error if there is none)."""
        with cls._lock:
            cls._registered.pop(name, None)

    @classmethod
    def _scan(cls) -> dict[str, EntryPoint]:
        with cls._lock:
            if cls._entry_points is None:
                found: dict[str, EntryPoint] = {}
                for ep in entry_points(group=cls.group):
                    seen = found.get(ep.name)
                    if seen is None:
                        found[ep.name] = ep
                    elif seen.value != ep.value:  # the same target twice is no clash
                        own = _canonical(_distribution_of(ep)) == OWN_DISTRIBUTION
                        found[ep.name] = ep if own else seen
                        logger.warning(
                            "%s %r is declared by both %s (%s) and %s (%s); using %s",
                            cls.kind,
                            ep.name,
                            _distribution_of(seen),
                            seen.value,
                            _distribution_of(ep),
                            ep.value,
                            found[ep.name].value,
                        )
                cls._entry_points = found
            return cls._entry_points

    @classmethod
    def available(cls) -> dict[str, str]:
        """Every selectable name, sorted, mapped to what provides it.

        The value is the distribution that declares the entry point, or, for a
        class registered in process, the top-level package of its module.
        Listing imports no plugin.
        """
        with cls._lock:
            names = {name: _distribution_of(ep) for name, ep in cls._scan().items()}
            for name, component in cls._registered.items():
                names[name] = component.__module__.partition(".")[0]
            return dict(sorted(names.items()))

    @classmethod
    def get(cls, name: str) -> type[T]:
        """The class registered under ``name``.

        Args:
            name: A name registered in process or declared in the registry's group.

        Returns:
            The component class.

        Raises:
            UnknownComponentError: Nobody registered ``name``; lists the available names.
            ComponentLoadError: The entry point failed to import or is not a
                subclass of the base.
        """
        with cls._lock:
            component = cls._registered.get(name) or cls._loaded.get(name)
            if component is not None:
                return cast("type[T]", component)
            ep = cls._scan().get(name)
            if ep is None:
                available = tuple(cls.available())
                raise UnknownComponentError(
                    f"{cls._title()} {name!r} not found. It is either misspelled or not "
                    f"installed. Available: {', '.join(available) or '(none)'}",
                    name=name,
                    available=available,
                )
            dist = _distribution_of(ep)
            where = f"{cls._title()} {name!r} from distribution {dist} ({ep.value})"
            try:
                loaded = ep.load()
            except Exception as exc:  # any import-time failure of a plugin is reported the same way
                raise ComponentLoadError(
                    f"{where} failed to load: {type(exc).__name__}: {exc}",
                    name=name,
                    distribution=dist,
                ) from exc
            if not (isinstance(loaded, type) and issubclass(loaded, cls.base)):
                raise ComponentLoadError(
                    f"{where} is {loaded!r}, not a subclass of {cls.base.__name__}",
                    name=name,
                    distribution=dist,
                )
            if not getattr(loaded, "name", ""):
                cast(Any, loaded).name = name
            cls._loaded[name] = loaded
            return cast("type[T]", loaded)

    @classmethod
    def build(cls, name: str, **params: Any) -> T:
        """Instantiate the component ``name`` with the keyword arguments its ``__init__`` accepts.

        Keys the constructor does not take are left out, so one configuration
        mapping can serve every component of a registry.

        Args:
            name: The component name.
            **params: Candidate constructor arguments.

        Returns:
            A new instance.

        Raises:
            UnknownComponentError: ``name`` is not registered.
            ComponentLoadError: Its entry point failed to load.
        """
        component = cls.get(name)
        signature = inspect.signature(component.__init__)
        accepted = signature.parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
            params = {k: v for k, v in params.items() if k in accepted and k != "self"}
        return component(**params)

    @classmethod
    def refresh(cls) -> None:
        """Forget the entry-point scan and the classes loaded from it.

        The next lookup scans the installed distributions again, for example
        after a plugin was installed into the running interpreter. Classes
        registered in process stay.
        """
        with cls._lock:
            cls._entry_points = None
            cls._loaded = {}
