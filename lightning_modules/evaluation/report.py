"""The report of ``lift3d evaluate``: per-object records summarised (mean / median / std overall and per category,
objects/min; geometry per ground-truth source, never pooled across sources; objects whose geometry could not be
scored counted as failures with their reason), written as ``metrics.jsonl``, ``failures.jsonl``, ``summary.json``,
``summary.md``, ``report.md`` and
``report.html`` (the summary, a row per object with its input | renders | ground truth | depth strip, a histogram
PNG per metric, failures), and logged to W&B (a ``wandb.Table`` with one row per object, its strip as an image, and
the summary).
"""

from __future__ import annotations

import glob
import json
import math
import os
from typing import Optional

import numpy as np

# --- summaries and reports -----------------------------------------------------------------------------------------
METRIC_ORDER = ("psnr", "ssim", "lpips", "psnr_masked", "ssim_masked", "lpips_masked", "clip", "chamfer",
                "fscore@0.05", "fscore@0.1", "fscore@0.2", "fscore@0.5", "volume_iou")
LOWER_IS_BETTER = {"lpips", "lpips_masked", "chamfer"}
GEOMETRY_METRICS = ("chamfer", "fscore@0.05", "fscore@0.1", "fscore@0.2", "fscore@0.5", "volume_iou")
ALIGNMENTS = {  # what --align did to the predictions, as the report says it
    "yaw": "rotated about the vertical axis by the best of a 10° grid, then rigidly refined by ICP (the TripoSR "
           "protocol: a prediction can be turned by a large angle)",
    "cube": "rotated by the best of the 24 cube rotations × a yaw grid, then rigidly refined by ICP",
    "none": "compared in place (no rotation, no translation)"}


def gt_source(record: dict) -> str:
    """The ground-truth source of a record's geometry metrics (``unspecified`` for records that do not say)."""
    return str(record.get("gt") or "unspecified")


def metric_failures(records: list[dict]) -> list[dict]:
    """The objects whose geometry could not be scored (``geometry_error``: no predicted surface, no ground truth, a
    failed metric) as failure rows; their appearance metrics stay in the records."""
    return [{"key": r["key"], "shard": r.get("shard"), "stage": "geometry", "reason": r["geometry_error"]}
            for r in records if r.get("geometry_error")]


def metric_names(records: list[dict]) -> list[str]:
    present = {k for r in records for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return [m for m in METRIC_ORDER if m in present]


def summarise(records: list[dict], failures: list[dict], seconds: float) -> dict:
    """Mean / median / std / count of every metric overall and per category (None values are left out).

    Geometry metrics against different ground-truth sources (a record's ``gt``: shard mesh, asset file, depth points)
    are never averaged together: ``gt_sources`` holds them per source; ``overall`` and ``categories`` hold them only
    when every scored object has the same source. ``failures`` counts the failure rows (pass :func:`metric_failures`
    among them: objects without ground truth or with a failed metric) and ``failed`` lists each with its reason."""
    names = metric_names(records)
    sources = sorted({gt_source(r) for r in records if any(isinstance(r.get(m), (int, float)) for m in
                                                              GEOMETRY_METRICS)})

    def stats(rows, metrics=None):
        out = {}
        for m in metrics if metrics is not None else names:
            vals = np.array([r[m] for r in rows if isinstance(r.get(m), (int, float))], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            if len(vals):
                out[m] = {"mean": float(vals.mean()), "median": float(np.median(vals)), "std": float(vals.std()),
                          "n": int(len(vals))}
        return out

    cats = sorted({r["category"] for r in records})
    pooled = [m for m in names if m not in GEOMETRY_METRICS or len(sources) <= 1]
    geometry = [m for m in names if m in GEOMETRY_METRICS]
    by_source = {}
    for src in sources:
        rows = [r for r in records if gt_source(r) == src]
        by_source[src] = {"objects": len(rows), "overall": stats(rows, geometry),
                          "objects_per_category": {c: sum(r["category"] == c for r in rows)
                                                   for c in sorted({r["category"] for r in rows})},
                          "categories": {c: stats([r for r in rows if r["category"] == c], geometry)
                                         for c in sorted({r["category"] for r in rows})}}
    return {"objects": len(records), "failures": len(failures), "seconds": seconds,
            "objects_per_min": 60.0 * len(records) / seconds if seconds > 0 else None,
            "overall": stats(records, pooled), "categories": {c: stats([r for r in records if r["category"] == c],
                                                                       pooled) for c in cats},
            "objects_per_category": {c: sum(r["category"] == c for r in records) for c in cats},
            "gt_sources": by_source,
            "failed": [{"key": f.get("key"), "stage": f.get("stage"), "reason": f.get("reason")} for f in failures]}


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def summary_table(summary: dict) -> str:
    """Markdown: one row per category (and "all"), the mean of each metric."""
    names = [m for m in METRIC_ORDER if m in summary["overall"]]
    head = "| category | objects | " + " | ".join(f"{m} {'↓' if m in LOWER_IS_BETTER else '↑'}" for m in names)
    lines = [head + " |", "|" + "---|" * (len(names) + 2)]
    rows = [("all", summary["objects"], summary["overall"])] + \
        [(c, summary["objects_per_category"][c], s) for c, s in summary["categories"].items()]
    sources = summary.get("gt_sources") or {}
    if len(sources) > 1:  # geometry per ground-truth source, never pooled
        names = [m for m in METRIC_ORDER if m in summary["overall"] or
                 any(m in s["overall"] for s in sources.values())]
        head = "| category | objects | " + " | ".join(f"{m} {'↓' if m in LOWER_IS_BETTER else '↑'}" for m in names)
        lines = [head + " |", "|" + "---|" * (len(names) + 2)]
        for src, s in sources.items():
            rows.append((f"all, gt {src}", s["objects"], s["overall"]))
            rows += [(f"{c}, gt {src}", s["objects_per_category"][c], st) for c, st in s["categories"].items()]
    for name, n, stats in rows:
        lines.append(f"| {name} | {n} | " + " | ".join(_fmt(stats.get(m, {}).get("mean")) for m in names) + " |")
    return "\n".join(lines)


def histograms(records: list[dict], directory: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    os.makedirs(directory, exist_ok=True)
    for m in metric_names(records):
        vals = [r[m] for r in records if isinstance(r.get(m), (int, float)) and math.isfinite(r[m])]
        if not vals:
            continue
        fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
        ax.hist(vals, bins=min(20, max(5, len(vals))))
        ax.set_xlabel(m + (" (lower is better)" if m in LOWER_IS_BETTER else " (higher is better)"))
        ax.set_ylabel("objects")
        ax.set_title(f"{m}: mean {np.mean(vals):.4g} over {len(vals)}")
        fig.tight_layout()
        path = os.path.join(directory, f"{m.replace('@', '_at_')}.png")
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def write_reports(out_dir: str, records: list[dict], failures: list[dict], summary: dict, settings: dict) -> None:
    with open(os.path.join(out_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    with open(os.path.join(out_dir, "failures.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in failures)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump({**summary, "settings": settings}, f, indent=2)
    table = summary_table(summary)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(table + "\n")
    hists = [os.path.relpath(p, out_dir) for p in histograms(records, os.path.join(out_dir, "histograms"))]
    names = metric_names(records)
    rate = summary["objects_per_min"]
    md = [f"# Evaluation of `{settings['ckpt']}`", "",
          f"{summary['objects']} objects from `{settings['shards']}` ({summary['failures']} failed), "
          f"{summary['seconds']:.1f} s, {_fmt(rate)} objects/min, {settings['world_size']} rank(s). "
          f"Input view: {settings['input_view']}; ground truth: {settings['gt']}; alignment: {settings['align']}.",
          "", f"Alignment `{settings['align']}`: before the geometry metrics each prediction was "
          f"{ALIGNMENTS.get(settings['align'], settings['align'])}. {_rotation_note(records)}",
          "", "Ground truth per object (column gt): `shard_mesh` = the geometry as rendered (the sample's "
          "mesh.npz), `asset_file` = the asset file from --gt-meshes, `depth_points` = the depth maps' points. "
          f"Geometry is summarised per source, never pooled: {_source_counts(records)}.",
          "", "## Summary (means)", "", table, "", "## Histograms", ""]
    md += [f"![{h}]({h})" for h in hists]
    md += ["", "## Objects", "", "Each strip: input | renders of held-out views | ground truth | rendered depth.", "",
           "| key | category | gt | align rotation (°) | " + " | ".join(names) + " | strip |",
           "|" + "---|" * (len(names) + 5)]
    for r in records:
        md.append(f"| {r['key']} | {r['category']} | {r.get('gt') or '–'} | {_fmt(r.get('align_rotation_deg'))} | "
                  + " | ".join(_fmt(r.get(m)) for m in names) + f" | ![{r['key']}](renders/{r['key']}.png) |")
    if failures:
        md += ["", "## Failures", "", "| key | shard | stage | reason |", "|---|---|---|---|"]
        md += [f"| {f.get('key')} | {f.get('shard')} | {f.get('stage')} | {f.get('reason')} |" for f in failures]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(out_dir, "report.html"), "w") as f:
        f.write(_html(md))


def _rotation_note(records: list[dict]) -> str:
    angles = [(r["align_rotation_deg"], r["key"]) for r in records if isinstance(r.get("align_rotation_deg"), float)]
    if not angles:
        return "No object was aligned."
    big, key = max(angles)
    median = float(np.median([a for a, _ in angles]))
    return f"Rotation per object: column 'align rotation (°)', median {median:.1f}°, largest {big:.1f}° ({key})."


def _source_counts(records: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in records:
        src = gt_source(r) if r.get("gt") else "none"
        counts[src] = counts.get(src, 0) + 1
    return ", ".join(f"{n} × {src}" for src, n in sorted(counts.items())) or "no objects"


def _html(md_lines: list[str]) -> str:
    """The Markdown report as a standalone HTML page (tables, headings, images; nothing else is used)."""
    import html
    import re

    body, in_table = [], False
    for line in md_lines:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= set("-") for c in cells):
                continue
            cells = [re.sub(r"!\[([^]]*)\]\(([^)]*)\)", r'<img src="\2" alt="\1">', html.escape(c)) for c in cells]
            tag = "th" if not in_table else "td"
            body.append(("<table>" if not in_table else "") + "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells)
                        + "</tr>")
            in_table = True
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("!["):
            body.append(re.sub(r"!\[([^]]*)\]\(([^)]*)\)", r'<img src="\2" alt="\1">', html.escape(line)))
        elif line:
            body.append("<p>" + re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(line)) + "</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:2px 6px;font-size:13px}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>lift3d evaluation</title><style>{style}" \
           f"</style></head><body>{''.join(body)}</body></html>\n"


def log_wandb(out_dir: str, records: list[dict], summary: dict, settings: dict, args) -> Optional[str]:
    """The per-object table (with strips), the summary and the histograms as a W&B run in ``args.wandb_mode`` (the
    CLI resolves it: ``lightning_modules.launch.tracking.wandb_mode``); returns the sync command when the run is
    offline."""
    import wandb

    mode = args.wandb_mode
    run = wandb.init(project=args.wandb_project, name=args.wandb_name, group="evaluate", job_type="evaluate",
                     dir=out_dir, mode=mode, config=settings,
                     reinit="create_new")  # its own run, even in a process with another one open (make demo's fit)
    names = metric_names(records)
    table = wandb.Table(columns=["key", "category", *names, "strip"])
    for r in records:
        strip = os.path.join(out_dir, "renders", f"{r['key']}.png")
        table.add_data(r["key"], r["category"], *[r.get(m) for m in names],
                       wandb.Image(strip) if os.path.isfile(strip) else None)
    run.log({"evaluation/objects": table,
             **{f"evaluation/histogram/{os.path.basename(p)[:-4]}": wandb.Image(p)
                for p in sorted(glob.glob(os.path.join(out_dir, "histograms", "*.png")))}})
    for m, s in summary["overall"].items():
        run.summary[f"evaluation/{m}"] = s["mean"]
    run.summary["evaluation/objects_per_min"] = summary["objects_per_min"]
    directory = run.dir
    run.finish()
    if mode == "offline":
        return f"wandb sync {os.path.dirname(directory)}"
    return None
