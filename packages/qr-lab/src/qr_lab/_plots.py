"""The report's plots, as PNG bytes (matplotlib's Agg renderer; no display, no pyplot state)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from qr_lab._data import RunTable

__all__ = ["PLOTS", "render"]

_MAX_POINTS = 2000


def _png(draw: Callable[[Figure], None], size: tuple[float, float] = (7.5, 3.6)) -> bytes:
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _conditions(table: RunTable) -> list[str]:
    return [r[0] for r in table.sql("SELECT DISTINCT cond, cix FROM trials ORDER BY cix")]


def _empty(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes)


def cumulative(table: RunTable) -> bytes:
    """Cumulative Σz per condition in trial order, inside the 95% envelope ±1.96√n."""

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        longest = 0
        for cond in _conditions(table):
            z = table.con.execute(
                "SELECT z_score FROM used WHERE cond = ? ORDER BY ord, sequence_number", [cond]
            ).fetchnumpy()["z_score"]
            if len(z) == 0:
                continue
            path = np.cumsum(np.asarray(z, dtype=np.float64))
            step = max(1, len(path) // _MAX_POINTS)
            x = np.arange(1, len(path) + 1)[::step]
            ax.plot(x, path[::step], label=cond, linewidth=1.2)
            longest = max(longest, len(path))
        if longest == 0:
            _empty(ax, "usable tokens")
            return
        n = np.linspace(1, longest, 400)
        ax.fill_between(n, -1.96 * np.sqrt(n), 1.96 * np.sqrt(n), color="0.85", label="95%")
        ax.axhline(0, color="0.4", linewidth=0.6)
        ax.set_xlabel("tokens (trial order)")
        ax.set_ylabel("cumulative Σz")
        ax.legend(loc="upper left", fontsize=8)

    return _png(draw)


def u_distribution(table: RunTable) -> bytes:
    """Histogram of u (all usable tokens) and its QQ plot against the uniform."""

    def draw(fig: Figure) -> None:
        hist, qq = fig.subplots(1, 2)
        u = table.con.execute("SELECT u FROM used").fetchnumpy()["u"]
        u = np.sort(np.asarray(u, dtype=np.float64))
        if len(u) == 0:
            _empty(hist, "usable tokens")
            _empty(qq, "usable tokens")
            return
        hist.hist(u, bins=20, range=(0, 1), color="#4c72b0", edgecolor="white")
        hist.axhline(len(u) / 20, color="0.3", linestyle="--", linewidth=0.8)
        hist.set_xlabel("u")
        hist.set_ylabel("tokens")
        step = max(1, len(u) // _MAX_POINTS)
        theory = (np.arange(len(u)) + 0.5) / len(u)
        qq.plot(theory[::step], u[::step], ".", markersize=2)
        qq.plot([0, 1], [0, 1], color="0.3", linewidth=0.8)
        qq.set_xlabel("uniform quantile")
        qq.set_ylabel("u quantile")

    return _png(draw)


def z_by_condition(table: RunTable) -> bytes:
    """Each trial's Stouffer Z by condition, with the condition's box."""

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        conds = _conditions(table)
        groups = []
        for cond in conds:
            rows = table.sql(
                "SELECT sum(z_score) / sqrt(count(*)) FROM used WHERE cond = ? GROUP BY session",
                [cond],
            )
            groups.append(np.array([r[0] for r in rows], dtype=np.float64))
        if not any(len(g) for g in groups):
            _empty(ax, "usable tokens")
            return
        ax.boxplot(groups, showfliers=False)
        ax.set_xticks(range(1, len(conds) + 1), conds)
        for i, g in enumerate(groups, start=1):
            jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(g))
            ax.plot(i + jitter, g, "o", markersize=3, alpha=0.6)
        ax.axhline(0, color="0.4", linewidth=0.6)
        ax.set_ylabel("trial Stouffer Z")

    return _png(draw)


def per_position(table: RunTable) -> bytes:
    """Shannon entropy and chosen-token probability by token position, averaged over trials."""

    def draw(fig: Figure) -> None:
        ent, prob = fig.subplots(1, 2)
        for cond in _conditions(table):
            rows = table.sql(
                "SELECT sequence_number, avg(shannon_entropy), avg(token_prob) FROM used "
                "WHERE cond = ? GROUP BY 1 ORDER BY 1",
                [cond],
            )
            pos = [r[0] for r in rows]
            ent.plot(pos, [math.nan if r[1] is None else r[1] for r in rows], label=cond)
            prob.plot(pos, [math.nan if r[2] is None else r[2] for r in rows], label=cond)
        ent.set_xlabel("token position")
        ent.set_ylabel("Shannon entropy (nats)")
        prob.set_xlabel("token position")
        prob.set_ylabel("chosen-token probability")
        ent.legend(fontsize=8)

    return _png(draw)


def health_timeline(table: RunTable) -> bytes:
    """Tokens, fallback tokens and unhealthy tokens over the run's time, all records."""

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        rows = table.sql(
            "WITH t AS (SELECT (timestamp_ns - min(timestamp_ns) OVER ()) / 1e9 AS s, "
            "fallback, unhealthy, failed FROM tok WHERE timestamp_ns IS NOT NULL) "
            "SELECT floor(s / greatest((SELECT max(s) FROM t) / 60, 1e-3)) AS b, min(s), "
            "count(*), sum(fallback::INT), sum(unhealthy::INT), sum(failed::INT) "
            "FROM t GROUP BY b ORDER BY b"
        )
        if not rows:
            _empty(ax, "records")
            return
        t = [r[1] for r in rows]
        ax.step(t, [r[2] for r in rows], where="post", label="tokens")
        ax.step(t, [r[3] for r in rows], where="post", label="fallback")
        ax.step(t, [r[4] for r in rows], where="post", label="health failed")
        ax.step(t, [r[5] for r in rows], where="post", label="failed")
        ax.set_xlabel("seconds since the first record")
        ax.set_ylabel("records per bin")
        ax.legend(fontsize=8)

    return _png(draw)


def fetch_latency(table: RunTable) -> bytes:
    """Distribution of the entropy fetch latency (ms) with its median and 99th percentile."""

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        ms = table.con.execute(
            "SELECT entropy_fetch_ms FROM tok WHERE entropy_fetch_ms IS NOT NULL "
            "USING SAMPLE 200000 ROWS"
        ).fetchnumpy()["entropy_fetch_ms"]
        ms = np.asarray(ms, dtype=np.float64)
        if len(ms) == 0:
            _empty(ax, "fetch latencies")
            return
        ax.hist(ms, bins=40, color="#55a868", edgecolor="white")
        for q, style in ((50, "--"), (99, ":")):
            v = float(np.percentile(ms, q))
            ax.axvline(v, color="0.2", linestyle=style, label=f"p{q} = {v:.3g} ms")
        ax.set_xlabel("entropy fetch latency (ms)")
        ax.set_ylabel("tokens")
        ax.legend(fontsize=8)

    return _png(draw)


#: id, title, renderer: the report's plots in order.
PLOTS: tuple[tuple[str, str, Callable[[RunTable], bytes]], ...] = (
    ("cumulative", "Cumulative deviation of Σz per condition, with its 95% envelope", cumulative),
    ("u", "Histogram and QQ plot of u", u_distribution),
    ("z", "z by condition (one point per trial)", z_by_condition),
    ("position", "Per-position Shannon entropy and chosen-token probability", per_position),
    ("health", "Fallback and health timeline", health_timeline),
    ("latency", "Entropy fetch latency", fetch_latency),
)


def render(table: RunTable) -> list[tuple[str, str, bytes]]:
    """Every plot of the report: (id, title, PNG bytes)."""
    return [(pid, title, fn(table)) for pid, title, fn in PLOTS]
