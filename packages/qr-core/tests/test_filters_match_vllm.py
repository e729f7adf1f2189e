"""The tokens qr-core can choose are the tokens vLLM 0.32's own sampler functions keep.

vLLM's order (temperature, min-p, top-k, top-p) is run with its own code:
``Sampler.apply_temperature``, ``MinPLogitsProcessor.apply`` and
``apply_top_k_top_p_pytorch`` on CPU float32 logits. A token vLLM keeps is
one left finite. qr-core's set is what ``sampling_fidelity`` gives a nonzero
intended probability (the selector's filters on a full sort), and the head
path's candidate count must match it too.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from qr_core import TokenSelector, sampling_fidelity

# torch and vLLM warn about their own internals at import; not ours to fix.
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:vllm.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning:torch.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning:vllm.*"),
    pytest.mark.filterwarnings("ignore::UserWarning:torch.*"),
]

ROWS = 200


def _vllm_kept(
    logits: np.ndarray, t: np.ndarray, k: np.ndarray, p: np.ndarray, m: np.ndarray
) -> list[set[int]]:
    torch = pytest.importorskip("torch")
    pytest.importorskip("vllm")
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor.builtin import MinPLogitsProcessor
    from vllm.v1.sample.logits_processor.interface import BatchUpdate
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch
    from vllm.v1.sample.sampler import Sampler

    rows, vocab = logits.shape
    x = torch.from_numpy(logits.astype(np.float32).copy())
    x = Sampler.apply_temperature(x, torch.from_numpy(t.astype(np.float32)), all_random=True)
    config = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=rows))
    min_p = MinPLogitsProcessor(config, torch.device("cpu"), is_pin_memory=False)  # type: ignore[arg-type]
    added = [(i, SamplingParams(min_p=float(m[i])), None, []) for i in range(rows)]
    min_p.update_state(BatchUpdate(batch_size=rows, removed=[], added=added, moved=[]))
    x = min_p.apply(x)
    # vLLM passes k = vocab for "no top-k" and p = 1 for "no top-p".
    k_t = torch.from_numpy(np.where(k > 0, k, vocab).astype(np.int64))
    p_t = torch.from_numpy(p.astype(np.float32))
    x = apply_top_k_top_p_pytorch(x, k_t, p_t, allow_cpu_sync=True)
    finite = torch.isfinite(x).numpy()
    return [set(np.flatnonzero(row).tolist()) for row in finite]


def test_the_kept_sets_equal_vllms_on_random_rows() -> None:
    rng = np.random.default_rng(32)
    vocab = 1000
    logits = (rng.standard_normal((ROWS, vocab)) * rng.uniform(0.5, 4.0, (ROWS, 1))).astype(
        np.float32
    )
    t = rng.uniform(0.3, 2.0, ROWS)
    k = np.where(rng.random(ROWS) < 0.3, 0, rng.integers(1, 200, ROWS))
    p = np.where(rng.random(ROWS) < 0.3, 1.0, rng.uniform(0.05, 0.99, ROWS))
    m = np.where(rng.random(ROWS) < 0.3, 0.0, rng.uniform(0.001, 0.5, ROWS))
    theirs = _vllm_kept(logits, t, k, p, m)
    counts = TokenSelector().select_batch(logits, temperature=t, top_k=k, top_p=p, min_p=m, u=0.5)
    mismatched = []
    for r in range(ROWS):
        settings = {"temperature": t[r], "top_k": int(k[r]), "top_p": p[r], "min_p": m[r]}
        fid = sampling_fidelity(logits[r], sample_count=16, **settings)  # type: ignore[arg-type]
        ours = set(np.flatnonzero(fid.intended > 0).tolist())
        if ours != theirs[r] or counts.num_candidates[r] != len(theirs[r]):  # type: ignore[index]
            mismatched.append((r, len(ours), len(theirs[r]), settings))
    assert not mismatched


def test_top_k_ties_at_the_kth_value_are_kept_like_vllm() -> None:
    logits = np.array([[2.0, 1.0, 1.0, 1.0, 0.0, -1.0]], dtype=np.float32)
    one = np.ones(1)
    theirs = _vllm_kept(logits, one, np.array([2]), one, np.zeros(1))
    fid = sampling_fidelity(logits[0], sample_count=1, top_k=2)
    assert theirs[0] == {0, 1, 2, 3} == set(np.flatnonzero(fid.intended > 0).tolist())
