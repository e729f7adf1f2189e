"""Route the plugin's log lines through vLLM's log handlers (timestamp, level, process).

vLLM configures only its own ``vllm`` logger. Lines of the ``qr_sampler`` logger
(and of ``qr_vllm``, ``qr_entropy``, ``qr_grpc``) would otherwise reach Python's
last-resort handler: no timestamp, no level, and nothing below WARNING, so
``qr_log_level=full`` lines (INFO) were lost. `attach_to_vllm_logging` gives
those loggers vLLM's handlers and level, once, in each process that builds the
processor or validates requests. Logging the user configured is left alone: a
plugin logger with handlers of its own, or a root logger with handlers (lines
propagate there). See ARCHITECTURE.md, design note "Plugin logging".
"""

from __future__ import annotations

import logging

__all__ = ["PLUGIN_LOGGERS", "attach_to_vllm_logging"]

#: Loggers whose lines go where vLLM's go.
PLUGIN_LOGGERS: tuple[str, ...] = ("qr_sampler", "qr_vllm", "qr_entropy", "qr_grpc")


def attach_to_vllm_logging() -> bool:
    """Give the plugin's loggers vLLM's handlers and level; True when vLLM has handlers.

    Idempotent. Nothing changes when vLLM's logging is off (no handlers on
    ``vllm``) or the root logger has handlers (the application configured
    logging); a plugin logger with handlers of its own is skipped. A plugin
    logger without a level of its own takes vLLM's.
    """
    vllm_logger = logging.getLogger("vllm")
    handlers = list(vllm_logger.handlers)
    if not handlers or logging.getLogger().handlers:
        return False
    level = vllm_logger.level or logging.INFO
    for name in PLUGIN_LOGGERS:
        plugin = logging.getLogger(name)
        if plugin.handlers:
            continue
        for handler in handlers:
            plugin.addHandler(handler)
        if plugin.level == logging.NOTSET:
            plugin.setLevel(level)
    return True
