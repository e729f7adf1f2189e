"""Engine configurations the processor refuses to start under, and its start-up sizing.

Checked when vLLM builds the processor in the engine process, so a refused
configuration stops the engine at start with a message that says what to
change, instead of hanging or returning wrong numbers later (see ARCHITECTURE.md,
design note "Host syncs" and the README's GPU notes).
"""

from __future__ import annotations

from typing import Any

from qr_vllm._errors import UnsupportedEngineError

__all__ = ["check_engine", "engine_limits"]

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
