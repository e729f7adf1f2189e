"""The ``qr_entropy.sources`` registry: every source, built-in or third-party, by entry point.

qr-entropy declares its own sources in its pyproject, so there is one way in.
The entry points are scanned once, lazily, on the first lookup that needs them,
and each is imported only when it is selected. When two distributions declare
one name, qr-entropy's own entry point wins, else the first seen, with a
warning. `EntropySourceRegistry.register` adds a class in process (tests, or an
application that cannot ship an entry point); such a class wins over entry
points. qr_core's registries follow the same idiom (see ARCHITECTURE.md, design
note "One registry idiom").
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar, TypeVar

from qr_entropy._base import EntropySource
from qr_entropy._errors import EntropyConfigError, SourceLoadError, UnknownSourceError
from qr_entropy._fallback import FallbackEntropySource
from qr_entropy._settings import EntropySettings

__all__ = ["ENTRY_POINT_GROUP", "EntropySourceRegistry", "build_entropy_source"]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "qr_entropy.sources"
#: The distribution whose entry points win a name clash in ``qr_entropy.sources``.
OWN_DISTRIBUTION = "qr-entropy"
_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")

_SourceT = TypeVar("_SourceT", bound=type[EntropySource])


def _canonical(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _distribution_of(entry_point: EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return str(dist.name) if dist is not None else "<unknown distribution>"


class EntropySourceRegistry:
    """Finds entropy-source classes by name (see the module docstring for the rules)."""

    group: ClassVar[str] = ENTRY_POINT_GROUP
    kind: ClassVar[str] = "entropy source"
    base: ClassVar[type[Any]] = EntropySource
    _registered: ClassVar[dict[str, type[EntropySource]]] = {}
    _loaded: ClassVar[dict[str, type[EntropySource]]] = {}
    _entry_points: ClassVar[dict[str, EntryPoint] | None] = None
    _lock: ClassVar[threading.RLock] = threading.RLock()

    @classmethod
    def _title(cls) -> str:
        return cls.kind[:1].upper() + cls.kind[1:]

    @classmethod
    def register(cls, name: str) -> Callable[[_SourceT], _SourceT]:
        """Class decorator that registers an `EntropySource` subclass in this process.

        For tests, and for applications that cannot ship an entry point; a
        distribution declares an entry point instead. A class registered here
        wins over an entry point of the same name until `unregister`.

        Args:
            name: The name ``entropy_source_type`` uses to select the source.

        Returns:
            A decorator that registers the class and returns it unchanged.

        Raises:
            EntropyConfigError: ``name`` is not an identifier-like string, the
                class is not an `EntropySource` subclass, or the name is already
                registered to a different class.
        """
        if not isinstance(name, str) or not _NAME_PATTERN.match(name):
            raise EntropyConfigError(
                f"{cls.kind} name {name!r} is not allowed; use letters, digits, '_', '.', '-' "
                f"starting with a letter or '_'"
            )

        def decorator(source_cls: _SourceT) -> _SourceT:
            if not (isinstance(source_cls, type) and issubclass(source_cls, cls.base)):
                raise EntropyConfigError(
                    f"{cls.kind} {name!r} must subclass {cls.base.__name__}; got {source_cls!r}"
                )
            with cls._lock:
                taken = cls._registered.get(name)
                if taken is not None and taken is not source_cls:
                    raise EntropyConfigError(
                        f"{cls.kind} name {name!r} is already registered to "
                        f"{taken.__module__}.{taken.__qualname__}"
                    )
                cls._registered[name] = source_cls
            return source_cls

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
            for name, source_cls in cls._registered.items():
                names[name] = source_cls.__module__.partition(".")[0]
            return dict(sorted(names.items()))

    @classmethod
    def get(cls, name: str) -> type[EntropySource]:
        """The source class registered under ``name``.

        Raises:
            UnknownSourceError: nothing is installed under ``name``; the message
                lists every available name.
            SourceLoadError: the entry point failed to import, or is not an
                `EntropySource` subclass.
        """
        with cls._lock:
            source_cls = cls._registered.get(name) or cls._loaded.get(name)
            if source_cls is not None:
                return source_cls
            ep = cls._scan().get(name)
            if ep is None:
                available = tuple(cls.available())
                raise UnknownSourceError(
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
                raise SourceLoadError(
                    f"{where} failed to load: {type(exc).__name__}: {exc}",
                    name=name,
                    distribution=dist,
                ) from exc
            if not (isinstance(loaded, type) and issubclass(loaded, cls.base)):
                raise SourceLoadError(
                    f"{where} is {loaded!r}, not a subclass of {cls.base.__name__}",
                    name=name,
                    distribution=dist,
                )
            cls._loaded[name] = loaded
            return loaded

    @classmethod
    def build(cls, name: str, settings: EntropySettings | None = None) -> EntropySource:
        """Instantiate the source ``name`` from settings (read from the environment if None)."""
        settings = settings if settings is not None else EntropySettings()
        source = cls.get(name).from_settings(settings)
        # Applied here too so a subclass whose from_settings skips it still gets the guards.
        source.configure(settings)
        return source

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


def build_entropy_source(settings: EntropySettings | None = None) -> EntropySource:
    """Build the configured source, wrapped in its fallback unless ``fallback_mode`` is "error".

    Args:
        settings: The settings (or a subclass such as qr-vllm's config); read
            from ``QR_*`` environment variables and ``.env`` when None.

    Returns:
        ``settings.entropy_source_type`` alone when ``fallback_mode == "error"``
        or when the fallback would be the same source; otherwise a
        `FallbackEntropySource` around it and the ``fallback_mode`` source.
    """
    settings = settings if settings is not None else EntropySettings()
    primary = EntropySourceRegistry.build(settings.entropy_source_type, settings)
    if settings.fallback_mode == "error":
        return primary
    if settings.fallback_mode == settings.entropy_source_type:
        logger.info(
            "fallback_mode %r is the primary source itself; no fallback wrapper",
            settings.fallback_mode,
        )
        return primary
    fallback = EntropySourceRegistry.build(settings.fallback_mode, settings)
    return FallbackEntropySource(primary, fallback)
