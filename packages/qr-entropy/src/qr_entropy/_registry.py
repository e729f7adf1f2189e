"""The ``qr_entropy.sources`` registry: built-ins by decorator, third parties by entry point."""

from __future__ import annotations

import importlib
import logging
import re
import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import ClassVar, TypeVar

from qr_entropy._base import EntropySource
from qr_entropy._errors import EntropyConfigError, SourceLoadError, UnknownSourceError
from qr_entropy._fallback import FallbackEntropySource
from qr_entropy._settings import EntropySettings

__all__ = ["ENTRY_POINT_GROUP", "EntropySourceRegistry", "build_entropy_source"]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "qr_entropy.sources"
_BUILTIN_DISTRIBUTION = "qr-entropy"
_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")

_SourceT = TypeVar("_SourceT", bound=type[EntropySource])


def _distribution_of(entry_point: EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return str(dist.name) if dist is not None else "<unknown distribution>"


class EntropySourceRegistry:
    """Finds entropy-source classes by name.

    Built-in sources register with `register` when ``qr_entropy.sources`` is
    imported and take precedence over entry points of the same name. The
    ``qr_entropy.sources`` entry points are scanned once, on the first lookup
    that needs them, and each is imported only when it is selected.
    """

    _registered: ClassVar[dict[str, type[EntropySource]]] = {}
    _loaded: ClassVar[dict[str, type[EntropySource]]] = {}
    _entry_points: ClassVar[dict[str, EntryPoint] | None] = None
    _lock: ClassVar[threading.RLock] = threading.RLock()

    @classmethod
    def register(cls, name: str) -> Callable[[_SourceT], _SourceT]:
        """Class decorator that registers an `EntropySource` subclass under ``name``.

        Raises:
            EntropyConfigError: ``name`` is not an identifier-like string, or it
                is already registered to a different class.
        """
        if not isinstance(name, str) or not _NAME_PATTERN.match(name):
            raise EntropyConfigError(
                f"source name {name!r} is not allowed; use letters, digits, '_', '.', '-' "
                f"starting with a letter or '_'"
            )

        def decorator(source_cls: _SourceT) -> _SourceT:
            with cls._lock:
                existing = cls._registered.get(name)
                if existing is not None and existing is not source_cls:
                    raise EntropyConfigError(
                        f"source name {name!r} is already registered to "
                        f"{existing.__module__}.{existing.__qualname__}"
                    )
                cls._registered[name] = source_cls
            return source_cls

        return decorator

    @classmethod
    def _ensure_builtins(cls) -> None:
        # Importing the module runs the @register decorators of the built-ins.
        importlib.import_module("qr_entropy.sources")

    @classmethod
    def _scan(cls) -> dict[str, EntryPoint]:
        with cls._lock:
            if cls._entry_points is None:
                found: dict[str, EntryPoint] = {}
                for entry_point in entry_points(group=ENTRY_POINT_GROUP):
                    if entry_point.name in found:
                        logger.warning(
                            "entropy source %r is declared by both %s and %s; using the first",
                            entry_point.name,
                            _distribution_of(found[entry_point.name]),
                            _distribution_of(entry_point),
                        )
                        continue
                    found[entry_point.name] = entry_point
                cls._entry_points = found
            return cls._entry_points

    @classmethod
    def refresh(cls) -> None:
        """Forget the entry-point scan and the classes loaded from it.

        The next lookup scans the installed distributions again, for example
        after a plugin was installed into the running interpreter.
        """
        with cls._lock:
            cls._entry_points = None
            cls._loaded.clear()

    @classmethod
    def available(cls) -> dict[str, str]:
        """Every selectable source name, mapped to the distribution that provides it."""
        cls._ensure_builtins()
        names = dict.fromkeys(cls._registered, _BUILTIN_DISTRIBUTION)
        for name, entry_point in cls._scan().items():
            names.setdefault(name, _distribution_of(entry_point))
        for name, source_cls in cls._registered.items():
            if not source_cls.__module__.startswith("qr_entropy."):
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
        cls._ensure_builtins()
        with cls._lock:
            registered = cls._registered.get(name)
            if registered is not None:
                return registered
            loaded = cls._loaded.get(name)
            if loaded is not None:
                return loaded
            entry_point = cls._scan().get(name)
            if entry_point is None:
                raise UnknownSourceError(
                    f"Entropy source {name!r} not found. It is either misspelled or not "
                    f"installed. Available sources: {', '.join(cls.available()) or 'none'}"
                )
            distribution = _distribution_of(entry_point)
            try:
                obj = entry_point.load()
            except Exception as exc:
                raise SourceLoadError(
                    f"entropy source {name!r} from distribution {distribution} "
                    f"({entry_point.value}) failed to import: {type(exc).__name__}: {exc}"
                ) from exc
            if not (isinstance(obj, type) and issubclass(obj, EntropySource)):
                raise SourceLoadError(
                    f"entropy source {name!r} from distribution {distribution} "
                    f"({entry_point.value}) is {obj!r}, not an EntropySource subclass"
                )
            cls._loaded[name] = obj
            return obj

    @classmethod
    def build(cls, name: str, settings: EntropySettings | None = None) -> EntropySource:
        """Instantiate the source ``name`` from settings (read from the environment if None)."""
        settings = settings if settings is not None else EntropySettings()
        source = cls.get(name).from_settings(settings)
        # Applied here too so a subclass whose from_settings skips it still gets the guards.
        source.configure(settings)
        return source


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
