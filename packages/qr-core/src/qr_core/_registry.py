"""Name-to-class registries: built-ins by decorator, third parties by entry point.

Built-in classes register when their module is imported and win over an
entry point of the same name. Entry points are scanned once, lazily, on the
first lookup that needs them, and loaded only when selected, so an
uninstalled or broken plugin costs nothing until someone asks for it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar, Generic, TypeVar, cast

from qr_core._errors import QRCoreError, UnknownComponentError

__all__ = ["ComponentRegistry"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
C = TypeVar("C", bound=type)


class ComponentRegistry(Generic[T]):
    """Base of :class:`AmplifierRegistry` and :class:`TemperatureStrategyRegistry`.

    Subclasses set :attr:`group` (the entry-point group), :attr:`kind` (used in
    messages) and :attr:`base` (the ABC every component must subclass). Each
    subclass gets its own tables.
    """

    group: ClassVar[str]
    kind: ClassVar[str]
    base: ClassVar[type[Any]]
    _builtins: ClassVar[dict[str, type[Any]]]
    _loaded: ClassVar[dict[str, type[Any]]]
    _entry_points: ClassVar[dict[str, EntryPoint] | None]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._builtins = {}
        cls._loaded = {}
        cls._entry_points = None

    @classmethod
    def register(cls, name: str) -> Callable[[C], C]:
        """Class decorator that registers a built-in component under ``name``.

        Args:
            name: The name configuration uses to select the component.

        Returns:
            A decorator that registers the class, sets its ``name`` and returns it unchanged.

        Raises:
            QRCoreError: The class does not subclass the registry's base, or the
                name is already taken by another class.
        """

        def decorator(component: C) -> C:
            if not (isinstance(component, type) and issubclass(component, cls.base)):
                msg = f"{cls.kind} {name!r} must subclass {cls.base.__name__}; got {component!r}"
                raise QRCoreError(msg)
            taken = cls._builtins.get(name)
            if taken is not None and taken.__qualname__ != component.__qualname__:
                msg = f"{cls.kind} name {name!r} is already registered to {taken.__qualname__}"
                raise QRCoreError(msg)
            cast(Any, component).name = name
            cls._builtins[name] = component
            return component

        return decorator

    @classmethod
    def _scan(cls) -> dict[str, EntryPoint]:
        if cls._entry_points is None:
            found: dict[str, EntryPoint] = {}
            for ep in entry_points(group=cls.group):
                # Two distributions claiming one name: the first one seen wins, and we say so.
                if ep.name in found and found[ep.name].value != ep.value:
                    logger.warning(
                        "%s %r is declared twice in %s (%s and %s); using the first",
                        cls.kind,
                        ep.name,
                        cls.group,
                        found[ep.name].value,
                        ep.value,
                    )
                    continue
                found[ep.name] = ep
            cls._entry_points = found
        return cls._entry_points

    @classmethod
    def available(cls) -> list[str]:
        """Every selectable name, built-in or from an entry point, sorted."""
        return sorted(set(cls._builtins) | set(cls._scan()))

    @classmethod
    def get(cls, name: str) -> type[T]:
        """The class registered under ``name``.

        Args:
            name: A built-in name or an entry-point name of the registry's group.

        Returns:
            The component class.

        Raises:
            UnknownComponentError: Nobody registered ``name``; lists the available names.
            QRCoreError: The entry point failed to load or is not a subclass of the base.
        """
        if name in cls._builtins:
            return cls._builtins[name]
        if name in cls._loaded:
            return cls._loaded[name]
        ep = cls._scan().get(name)
        if ep is None:
            msg = (
                f"{cls.kind} {name!r} not found. It is either misspelled or not installed. "
                f"Available: {', '.join(cls.available()) or '(none)'}"
            )
            raise UnknownComponentError(msg)
        dist = ep.dist.name if ep.dist is not None else "an unknown distribution"
        try:
            component = ep.load()
        except Exception as exc:  # any import-time failure of a plugin is reported the same way
            msg = (
                f"{cls.kind} {name!r} from {dist} ({ep.value}) failed to load: "
                f"{type(exc).__name__}: {exc}"
            )
            raise QRCoreError(msg) from exc
        if not (isinstance(component, type) and issubclass(component, cls.base)):
            msg = (
                f"{cls.kind} {name!r} from {dist} ({ep.value}) is not a subclass of "
                f"{cls.base.__name__}"
            )
            raise QRCoreError(msg)
        cls._loaded[name] = component
        return component

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
        """
        component = cls.get(name)
        signature = inspect.signature(component.__init__)
        accepted = signature.parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
            params = {k: v for k, v in params.items() if k in accepted and k != "self"}
        return component(**params)

    @classmethod
    def clear_cache(cls) -> None:
        """Forget the entry-point scan and loaded plugins (after installing one at run time)."""
        cls._entry_points = None
        cls._loaded = {}
