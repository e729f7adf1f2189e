"""Engine settings: what the processor refuses to start under, start-up sizing and warm-up.

Checked when vLLM builds the processor in the engine process, so a refused
configuration stops the engine at start with a message that says what to
change, instead of hanging or returning wrong numbers later (see ARCHITECTURE.md,
design note "Host syncs" and the README's GPU notes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from qr_core import COMPILE_ENV, warm_up_compiled

from qr_vllm._errors import UnsupportedEngineError

__all__ = [
    "check_engine",
    "engine_limits",
    "reserve_scratch",
    "sync_allowed_factory",
    "warm_up",
]

logger = logging.getLogger("qr_sampler")

#: vLLM's logprobs modes computed after the logits processors: they would see one-hot rows.
PROCESSED_MODES = ("processed_logits", "processed_logprobs")


def check_engine(vllm_config: Any) -> None:
    """Refuse engine settings the processor cannot serve correctly.

    Raises:
        UnsupportedEngineError: batch-sharded sampling under tensor parallelism, or a
            processed logprobs mode.
    """
    parallel = getattr(vllm_config, "parallel_config", None)
    tp = int(getattr(parallel, "tensor_parallel_size", 1) or 1)
    if tp > 1 and getattr(parallel, "enable_batch_sharded_sampling", False):
        msg = (
            "qr-sampler cannot run with enable_batch_sharded_sampling=True under tensor "
            f"parallelism (tensor_parallel_size={tp}): each rank would sample different rows "
            "while rank 0 draws every row's entropy. Start vLLM without "
            "--enable-batch-sharded-sampling."
        )
        raise UnsupportedEngineError(msg)
    model = getattr(vllm_config, "model_config", None)
    mode = getattr(model, "logprobs_mode", "raw_logprobs")
    if mode in PROCESSED_MODES:
        msg = (
            f"qr-sampler cannot run with logprobs_mode={mode!r}: processed logprobs are "
            "computed after the processor has made each row one-hot on its chosen token, "
            "so they would read 0.0 and -inf. Allowed: raw_logprobs (the default) or "
            "raw_logits, which report the model's own distribution."
        )
        raise UnsupportedEngineError(msg)


def engine_limits(vllm_config: Any, req_states: Any | None) -> tuple[int, int] | None:
    """(rows, vocabulary) of the engine's largest step, when vLLM says; else None.

    Rows are ``max_num_seqs`` (one row per request and step without speculative
    decoding; a larger step grows the buffers when it comes).
    """
    if req_states is not None:
        rows = getattr(req_states, "max_num_reqs", None)
        vocab = getattr(req_states, "vocab_size", None)
    else:
        rows = getattr(getattr(vllm_config, "scheduler_config", None), "max_num_seqs", None)
        model = getattr(vllm_config, "model_config", None)
        get_vocab = getattr(model, "get_vocab_size", None)
        vocab = get_vocab() if callable(get_vocab) else None
    if not isinstance(rows, int) or not isinstance(vocab, int) or rows < 1 or vocab < 1:
        return None
    return rows, vocab


def reserve_scratch(sampler: Any, vllm_config: Any, req_states: Any | None) -> None:
    """Allocate the step's scratch for the engine's largest step now, and log its size.

    Held from start-up, before vLLM sizes its KV cache from what is left (see
    ARCHITECTURE.md, design note "Host syncs"). Nothing when vLLM does not say.
    """
    limits = engine_limits(vllm_config, req_states)
    if limits is None:
        return
    import torch  # noqa: PLC0415 - the engine process has it; this module's import stays light

    rows, vocab = limits
    nbytes = sampler.reserve(rows, vocab, torch.float32)
    logger.info(
        "qr-sampler scratch: %.1f MiB for %d rows of %d logits on %s",
        nbytes / 2**20,
        rows,
        vocab,
        sampler.device,
    )


def sync_allowed_factory() -> Callable[[], AbstractContextManager[Any]]:
    """vLLM's ``gpu_sync_allowed``, under which the step's deliberate syncs pass
    ``VLLM_GPU_SYNC_CHECK`` (see ARCHITECTURE.md, design note "Host syncs")."""
    try:
        from vllm.utils.gpu_sync_debug import gpu_sync_allowed  # noqa: PLC0415
    except ImportError:  # pragma: no cover - every supported vLLM has it
        return nullcontext
    return gpu_sync_allowed


def warm_up(vllm_config: Any, device: Any) -> float:
    """Compile qr_core's per-step kernels now (``QR_COMPILE``), so no request pays for it.

    Returns:
        Seconds spent (0 when the compiled path is off).
    """
    # The vocabulary only picks the shape class (a batch of one row runs the numpy
    # shortcut below 65,536 logits); sizes are symbolic, so any width of that class does.
    get_vocab_size = getattr(getattr(vllm_config, "model_config", None), "get_vocab_size", None)
    vocab = int(get_vocab_size()) if callable(get_vocab_size) else 32000
    spent = warm_up_compiled(device, vocab)
    if spent:
        logger.info(
            "qr-sampler compiled path ready in %.1f s (%s=off skips it)", spent, COMPILE_ENV
        )
    return spent
