"""PNG charts of a comparison (matplotlib, Agg canvas: no display needed).

- :func:`accuracy_chart`: top-1 accuracy against GMACs, bubble area proportional to the parameter count
  (after Canziani, Paszke & Culurciello 2016, arXiv:1605.07678, Fig. 2).
- :func:`speed_chart`: latency at batch 1 and throughput at the large batch, as bars.
- :func:`memory_chart`: weights, estimated forward activations at the large batch and measured peak RSS.
- :func:`checkpoints_chart`: every published checkpoint's top-1 against GMACs (:func:`published_top1`), the
  checkpoints of one network joined by a line.
"""

from __future__ import annotations

import math

__all__ = ["accuracy_chart", "speed_chart", "memory_chart", "published_top1", "checkpoints_chart"]


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _fmt_count(n):
    """1234567 -> '1.2M', 48680 -> '48.7K'."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def _fmt_mb(v):
    return f"{v:,.0f}" if v >= 10 else f"{v:.2g}"


def _nice_sizes(max_params):
    """Up to three round parameter counts (1, 2.5, 5 × 10^k) at most the largest model's, for the size legend."""
    out = [m * 10**k for k in range(0, 13) for m in (1, 2.5, 5) if m * 10**k <= max_params * 1.05]
    return out[-3:] if out else [max_params]


def accuracy_chart(results, path, title="Top-1 accuracy vs. multiply-adds"):
    """Bubble chart: x = GMACs, y = top-1 (%), bubble area ∝ parameters; models without a top-1 are named in a
    footnote."""
    known = [r for r in results if r.get("top1") is not None]
    missing = [r["model"] for r in results if r.get("top1") is None]
    fig = _figure(9.5, 6)
    ax = fig.add_subplot(1, 1, 1)
    max_params = max((r["params"] for r in results), default=1)
    area_per_param = 3500.0 / max(max_params, 1)  # the largest model gets 3,500 pt²
    colors = [f"C{i % 10}" for i in range(len(known))]
    # GMACs for ImageNet networks, MMACs or KMACs for small ones.
    top_gmacs = max((r["gmacs"] for r in known), default=1.0)
    scale, unit = next(
        ((f, u) for f, u in ((1, "GMACs"), (1e3, "MMACs"), (1e6, "KMACs")) if top_gmacs * f >= 0.1), (1e9, "MACs")
    )
    for r, c in zip(known, colors):
        area = max(r["params"] * area_per_param, 12)
        ax.scatter(
            r["gmacs"] * scale, r["top1"], s=area, color=c, alpha=0.55, edgecolors="black", linewidths=0.8, zorder=3
        )
        # The label sits right of the bubble (offset by its radius in points).
        ax.annotate(
            f"{r['model']} ({_fmt_count(r['params'])})",
            (r["gmacs"] * scale, r["top1"]),
            xytext=((area / math.pi) ** 0.5 + 3, 0),
            textcoords="offset points",
            ha="left",
            va="center",
            fontsize=8,
            zorder=4,
        )
    if known:
        xs = [r["gmacs"] * scale for r in known]
        ys = [r["top1"] for r in known]
        if min(xs) > 0 and max(xs) / min(xs) > 30:
            ax.set_xscale("log")
            ax.set_xlim(min(xs) / 2, max(xs) * 2)
        else:
            ax.set_xlim(-0.06 * max(xs), max(xs) * 1.3)
        ax.set_ylim(min(ys) - 4, max(ys) + 4)
        sizes = _nice_sizes(max_params)
        handles = [
            ax.scatter([], [], s=m * area_per_param, color="grey", alpha=0.35, edgecolors="black", linewidths=0.8)
            for m in sizes
        ]
        # Legend rows far enough apart for the largest reference bubble (spacing is in font sizes, 8 pt).
        spacing = 0.8 + 2 * (max(sizes) * area_per_param / math.pi) ** 0.5 / 8 * 0.75
        ax.legend(
            handles,
            [_fmt_count(m) for m in sizes],
            loc="center left",
            bbox_to_anchor=(1.02, 0.5),
            labelspacing=spacing,
            borderpad=1.6,
            handletextpad=1.5,
            frameon=False,
            fontsize=8,
            title="parameters\n(bubble area)",
            title_fontsize=8,
        )
    else:
        ax.text(0.5, 0.5, "no model has a known top-1 accuracy", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel(f"multiply-adds per image ({unit if known else 'GMACs'}, computed)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3, zorder=0)
    note = "top-1: published figure of the model's reference weights (spec metadata)."
    if missing:
        note += f"  Not plotted (no published top-1): {', '.join(missing)}."
    fig.text(0.01, 0.01, note, fontsize=7, ha="left", va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path)
    return path


def _barh(ax, names, values, color, fmt, xlabel):
    ys = range(len(names))
    ax.barh(ys, values, color=color, alpha=0.8)
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    top = max(values) if values else 1
    for y, v in zip(ys, values):
        ax.text(v + top * 0.01, y, fmt(v), va="center", fontsize=8)
    ax.set_xlim(0, top * 1.22 if top > 0 else 1)
    ax.set_xlabel(xlabel)
    ax.grid(True, axis="x", alpha=0.3)


def speed_chart(results, path, machine=""):
    """Bars of the median latency at the first batch size and the throughput at the second."""
    names = [r["model"] for r in results]
    b1 = results[0]["latency_batch"] if results else 1
    big = [k for k in (results[0] if results else {}) if k.startswith("throughput_b")]
    fig = _figure(10, 1.2 + 0.45 * len(names))
    ax1 = fig.add_subplot(1, 2, 1)
    _barh(
        ax1,
        names,
        [r["latency_ms"] for r in results],
        "C0",
        lambda v: f"{v:,.1f} ms",
        f"latency at batch {b1} (ms, median)",
    )
    ax1.set_title("Latency (lower is better)", fontsize=10)
    if big:
        key = big[0]
        ax2 = fig.add_subplot(1, 2, 2)
        _barh(
            ax2,
            names,
            [r[key] for r in results],
            "C2",
            lambda v: f"{v:,.1f}/s",
            f"throughput at batch {key[len('throughput_b') :]} (images/s, median)",
        )
        ax2.set_title("Throughput (higher is better)", fontsize=10)
    if machine:
        fig.suptitle(machine, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def memory_chart(results, path, batch=32):
    """Grouped bars (MB): weights, the estimated inference working set of ``batch`` images, their sum, and the
    measured peak RSS increase (which adds TensorFlow's runtime, kernels' workspaces and caches)."""
    names = [r["model"] for r in results]
    series = [
        ("weights", [r["param_mb"] for r in results], "C1"),
        (f"activation working set, batch {batch} (estimate)", [r["working_set_mb"] * batch for r in results], "C4"),
        ("measured peak RSS increase", [r["peak_rss_mb"] for r in results], "C3"),
    ]
    fig = _figure(9, 1.8 + 0.75 * len(names))
    ax = fig.add_subplot(1, 1, 1)
    h = 0.27
    top = max((v for _, vals, _ in series for v in vals), default=1)
    for k, (label, vals, color) in enumerate(series):
        ys = [i + (k - 1) * h for i in range(len(names))]
        ax.barh(ys, vals, height=h, color=color, alpha=0.8, label=label)
        for y, v in zip(ys, vals):
            ax.text(v + top * 0.01, y, _fmt_mb(v), va="center", fontsize=7)
    ax.set_yticks(list(range(len(names))), names)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.18 if top > 0 else 1)
    ax.set_xlabel("MB (10⁶ bytes)")
    ax.set_title(f"Inference memory at batch {batch}: estimates and measured peak", pad=24)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def published_top1(count_missing: bool = True) -> list[dict]:
    """Every registered variant with a published ImageNet top-1, from its checkpoints (the weights declared beside
    its architecture): ``{"model", "gmacs", "gmacs_counted", "params", "checkpoints": [(label, top1), ...]}``,
    checkpoints in the order declared. ``gmacs`` is the variant's reference figure; a variant without one
    (keras.applications' ResNet101V2 / 152V2) gets the multiply-adds counted from its built layers
    (:func:`kerasarch.analysis.profile.profile`, ``gmacs_counted`` True), or is left out with
    ``count_missing=False``."""
    from kerasarch.registry import get_spec, list_models

    points = []
    for name in list_models(pretrained=True):
        spec = get_spec(name)
        published = [(f"{c.source}:{c.id}", c.top1) for c in spec.checkpoints if c.top1 is not None]
        if not published:
            continue
        gmacs, counted = spec.gmacs, False
        if gmacs is None and count_missing:
            from kerasarch.analysis.profile import profile

            gmacs, counted = round(profile(name).gmacs, 3), True
        if gmacs:
            points.append(
                {
                    "model": name,
                    "gmacs": gmacs,
                    "gmacs_counted": counted,
                    "params": spec.params or 0,
                    "checkpoints": published,
                }
            )
    return points


def _checkpoint_panel(ax, points, x_of, label_text, xlabel, colors):
    """One scatter of published top-1 against ``x_of(point)`` (log axis), a line joining a network's checkpoints,
    bubble area ∝ parameters, one colour per network (``colors``), labels nudged apart."""
    max_params = max((p["params"] for p in points), default=1) or 1
    area_per_param = 900.0 / max_params
    placed = []  # (log10 x, top-1 + label offset) of the labels drawn, to keep labels apart
    drawn = sorted((p for p in points if x_of(p)), key=x_of)
    for p in drawn:
        color = colors[p["model"]]
        ys = sorted(t for _, t in p["checkpoints"])
        xs = [x_of(p)] * len(ys)
        if len(ys) > 1:
            ax.plot(xs, ys, color=color, linewidth=1.5, alpha=0.8, zorder=2)
        ax.scatter(
            xs,
            ys,
            s=max(p["params"] * area_per_param, 12),
            color=color,
            alpha=0.6,
            edgecolors="black",
            linewidths=0.6,
            zorder=3,
        )
        if label_text is None:
            continue
        anchor = (math.log10(xs[0]), ys[-1])
        dy = 2
        while any(abs(anchor[0] - x) < 0.12 and abs(anchor[1] + dy / 12 - y) < 0.7 for x, y in placed):
            dy -= 9  # one text line lower (about 0.75 top-1 points at this size), until no label is in the way
        placed.append((anchor[0], anchor[1] + dy / 12))
        ax.annotate(label_text(p), (xs[0], ys[-1]), xytext=(6, dy), textcoords="offset points", fontsize=7, zorder=4)
    if drawn:
        xs = [x_of(p) for p in drawn]
        ax.set_xscale("log")
        ax.set_xlim(min(xs) / 1.6, max(xs) * 2.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("published ImageNet top-1 (%)")
    ax.grid(True, alpha=0.3, zorder=0)


def checkpoints_chart(
    points, path, title="Published ImageNet top-1 vs. multiply-adds, every checkpoint", costs=None, machine=""
):
    """The lecture's comparison (Canziani et al. 2016, Figs. 2-3) with every published checkpoint: one point per
    checkpoint at its variant's GMACs, the checkpoints of one variant (V1, V2, ...) joined by a line, bubble area ∝
    parameters.

    Args:
        points: as :func:`published_top1` returns.
        path: the PNG to write.
        costs: optional ``{model: {"latency_ms": ..., "memory_mb": ...}}`` (what ``bench/checkpoints_chart.py``
            measures): adds two panels, top-1 against the forward time of one image and against its memory.
        machine: the machine the costs were measured on, for the footnote.
    """
    fig = _figure(11, 7) if not costs else _figure(18, 7.5)
    panels = 1 if not costs else 3
    colors = {p["model"]: f"C{i % 10}" for i, p in enumerate(sorted(points, key=lambda p: p["gmacs"]))}
    ax = fig.add_subplot(1, panels, 1)
    _checkpoint_panel(
        ax,
        points,
        lambda p: p["gmacs"],
        lambda p: p["model"] + ("*" if p.get("gmacs_counted") else ""),
        "multiply-adds per image (GMACs, reference figure at 224x224)",
        colors,
    )
    ax.set_title(title if not costs else "top-1 vs. multiply-adds")
    note = (
        "Each point: one published checkpoint's top-1 (its own evaluation transform). A line joins "
        "the checkpoints of one network (e.g. torchvision IMAGENET1K_V1 and _V2); bubble area ∝ parameters. "
        "A checkpoint evaluated at another size (timm's, 288×288) costs (size/224)² × the GMACs shown. "
        "* no reference GMACs figure: counted from the built layers."
    )
    if costs:
        for k, (key, xlabel, heading) in enumerate(
            (
                ("latency_ms", "forward time of one 224x224 image (ms, median, float32)", "top-1 vs. forward time"),
                ("memory_mb", "weights + peak activations of one image (MB, float32)", "top-1 vs. memory"),
            ),
            start=2,
        ):
            axk = fig.add_subplot(1, panels, k, sharey=ax)
            _checkpoint_panel(
                axk, points, lambda p, key=key: (costs.get(p["model"]) or {}).get(key), None, xlabel, colors
            )
            axk.set_title(heading)
        fig.suptitle(title)
        note += (
            " Forward time: kerasarch's model in TensorFlow, batch 1, measured"
            + (f" on {machine}" if machine else "")
            + "; memory: parameters and the largest set of activations alive at once, counted from the layers."
        )
    fig.text(0.01, 0.01, note, fontsize=7, ha="left", va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path)
    return path
