"""Per-lesion part of the evaluation (:mod:`evaluate_methods`): hallucination and uncertainty.

For every lesion of a simulated scan (one label per lesion, ``SimulatedScan.lesion_labels``) and
every method at every parameter, :func:`~sirf_diffusion.metrics.lesion_report` gives the
contrast recovery coefficient against a local background shell
(:func:`~sirf_diffusion.metrics.lesion_backgrounds`: brain voxels more than :data:`SHELL_GAP` and
at most ``SHELL_GAP + SHELL_WIDTH`` voxels from the lesion, clear of every lesion), the relative
bias of the lesion mean and, for the diffusion methods with two or more chains, the ratio of
the mean posterior standard deviation (std over the chains of one scan) in the lesion to that in
its shell.  The kind (hot / cold) comes from the reference's contrast against the same shell; a
lesion within :data:`MIN_CONTRAST` of 1 gets no CRC.
:func:`~sirf_diffusion.metrics.lesion_verdict` turns the CRC (mean over realisations, at each
method's best parameter) into a word, and :func:`lesion_section` writes the table and says in
plain words where a diffusion method erases, fills or exaggerates a lesion.
:func:`plot_lesions` draws zoomed crops.  Described in ``docs/evaluation/README.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

#: Distance (voxels) between a lesion and its background shell, and the shell's thickness.
SHELL_GAP, SHELL_WIDTH = 2.0, 3.0
#: Lesions whose true contrast against their shell is within this of 1 get no CRC.
MIN_CONTRAST = 0.1
#: Verdict thresholds of :func:`~sirf_diffusion.metrics.lesion_verdict` (its defaults).
VERDICT_RULE = "CRC < 0.1: erased (hot) / filled (cold); < 0.5: partly; > 1.5: exaggerated"


def lesion_setup(lesion_labels: Any, masks: Mapping[str, Any]) -> dict[str, Any] | None:
    """The label image and background shells of a scan (``None`` for a scan without lesions)."""
    from sirf_diffusion.metrics import lesion_backgrounds

    if lesion_labels is None or not np.any(np.asarray(lesion_labels) > 0):
        return None
    brain = np.asarray(masks["brain"]) > 0.5
    return {"labels": np.asarray(lesion_labels),
            "backgrounds": lesion_backgrounds(lesion_labels, brain, gap=SHELL_GAP,
                                              width=SHELL_WIDTH)}


def scan_lesions(image: np.ndarray, reference: np.ndarray, setup: Mapping[str, Any],
                 std: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """:func:`~sirf_diffusion.metrics.lesion_report` of one image, by label (as a string)."""
    from sirf_diffusion.metrics import lesion_report

    reps = lesion_report(image, reference, setup["labels"], setup["backgrounds"], std,
                         min_contrast=MIN_CONTRAST)
    return {str(r.label): asdict(r) for r in reps}


def over_realisations(scans: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Per label: kind, true contrast and voxels, and the list over realisations of ``crc``,
    ``bias`` and (when every realisation has one) ``std_ratio``."""
    out: dict[str, Any] = {}
    for label, first in scans[0].items():
        rec = {k: first[k] for k in ("kind", "true_contrast", "voxels")}
        keys = ["crc", "bias"] + (["std_ratio"] if all(s[label]["std_ratio"] is not None
                                                       for s in scans) else [])
        for k in keys:
            rec[k] = [float(s[label][k]) for s in scans]
        out[label] = rec
    return out


def _mean_std(values: Sequence[float]) -> list[float]:
    """Mean and standard deviation (ddof=1) of the finite values; NaN / 0 when too few."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return [float(v.mean()) if v.size else math.nan, float(v.std(ddof=1)) if v.size > 1 else 0.0]


def summary_rows(cases: Sequence[Mapping[str, Any]], method: str,
                 best: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per (case, lesion) at the case's best parameter of ``method``: mean and std over
    realisations of CRC, bias and std ratio, and the verdict of the mean CRC."""
    from sirf_diffusion.metrics import lesion_verdict

    rows = []
    for case, b in zip(cases, best):
        lesions = case["methods"][method]["sweep"][b].get("lesions", {})
        for label, rec in lesions.items():
            row = {"subject": case["subject"], "label": int(label), "kind": rec["kind"],
                   "true_contrast": rec["true_contrast"], "voxels": rec["voxels"],
                   "crc": _mean_std(rec["crc"]), "bias": _mean_std(rec["bias"])}
            if "std_ratio" in rec:
                row["std_ratio"] = _mean_std(rec["std_ratio"])
            row["verdict"] = lesion_verdict(rec["kind"], row["crc"][0])
            rows.append(row)
    return rows


def _fmt(v: Sequence[float] | None, scale: float = 1.0, signed: bool = False) -> str:
    if v is None or not math.isfinite(v[0]):
        return "-"
    return f"{scale * v[0]:{'+' if signed else ''}.3g} ± {scale * v[1]:.2g}"


def lesion_section(rows: Mapping[str, Mapping[str, Any]], methods: Sequence[str],
                   labels: Mapping[str, str], diffusion: Sequence[str]) -> list[str]:
    """Markdown lines: the per-lesion table of one count level and the plain-words findings.

    ``rows``: the summary rows of the count level (method -> row with ``"lesions"``, from
    :func:`summary_rows`); ``labels``: display names; ``diffusion``: the diffusion methods.
    """
    from sirf_diffusion.metrics import metrics_table

    present = [m for m in methods if m in rows and rows[m].get("lesions")]
    if not present:
        return []
    table: dict[str, dict[str, Any]] = {}
    by_lesion: dict[tuple[int, int], dict[str, Mapping[str, Any]]] = {}
    for m in present:
        for r in rows[m]["lesions"]:
            by_lesion.setdefault((r["subject"], r["label"]), {})[m] = r
    for (subject, label), per_method in by_lesion.items():
        for m, r in per_method.items():
            table[f"{subject}/{label}, {labels[m]}"] = {
                "kind": r["kind"], "voxels": str(r["voxels"]),
                "true contrast": f"{r['true_contrast']:.3g}", "CRC": _fmt(r["crc"]),
                "verdict": r["verdict"], "lesion bias (%)": _fmt(r["bias"], 100, signed=True),
                "posterior std ratio": _fmt(r.get("std_ratio")) if m in diffusion else ""}
    lines = ["### Per lesion: contrast recovery and posterior uncertainty", "",
             "Each method at its best parameter; mean ± std over realisations. Lesion "
             "`subject/label`; kind and true contrast from the reference against a local "
             f"background shell (brain voxels {SHELL_GAP:g}-{SHELL_GAP + SHELL_WIDTH:g} voxels "
             "from the lesion); CRC = (lesion/background - 1) / (true contrast - 1) for hot and "
             "cold lesions alike (1: recovered, 0: at the background's level); lesion bias: "
             "relative bias of the lesion mean; posterior std ratio: mean posterior standard "
             "deviation (over the chains of a scan) in the lesion over that in the shell. "
             f"Verdict of the mean CRC: {VERDICT_RULE}. (The CRC columns of the summary table "
             "use the brain outside the lesions as background and the phantom's nominal hot / "
             "cold labels; a lesion at twice white matter can be darker than the grey matter "
             "around it, so read this table for recovery.)", "",
             metrics_table(table, first_column="lesion, method"), ""]
    lines += ["Where the diffusion methods erase, fill or exaggerate a lesion:", ""]
    findings: list[str] = []
    flagged = False
    for (subject, label), per_method in by_lesion.items():
        any_row = next(iter(per_method.values()))
        if any_row["kind"] == "none":
            findings.append(f"- lesion {subject}/{label}: true contrast "
                            f"{any_row['true_contrast']:.3g} against its surroundings, too low "
                            "for a CRC (not judged).")
            continue
        others = ", ".join(f"{labels[m]} {_fmt(r['crc'])}" for m, r in per_method.items()
                           if m not in diffusion)
        for m, r in per_method.items():
            if m not in diffusion or r["verdict"] in ("recovered", "undefined"):
                continue
            text = (f"- {labels[m]} **{r['verdict']}** the {r['kind']} lesion {subject}/{label} "
                    f"(true contrast {r['true_contrast']:.3g}, {r['voxels']} voxels): CRC "
                    f"{_fmt(r['crc'])}" + (f" against {others}" if others else ""))
            sr = r.get("std_ratio")
            if sr is not None and math.isfinite(sr[0]):
                text += (f"; posterior std in the lesion {sr[0]:.2g} x its background's ("
                         + ("more" if sr[0] > 1 else "no more") + " uncertain than around it)")
            findings.append(text + ".")
            flagged = True
    judged = [m for m in present if m in diffusion]
    if not flagged:
        findings.insert(0, "- no diffusion method (" + ", ".join(labels[m] for m in judged)
                        + ") erased, filled or exaggerated a lesion: every judged CRC in "
                        "[0.5, 1.5]." if judged else "- no diffusion method was run.")
    return lines + findings + [""]


def _crop_box(mask2d: np.ndarray, margin: int) -> tuple[slice, slice]:
    """A square box around ``mask2d`` with ``margin`` voxels, clipped to the image."""
    ys, xs = np.nonzero(mask2d)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = int(math.ceil(max(ys.max() - ys.min(), xs.max() - xs.min()) / 2)) + margin
    ny, nx = mask2d.shape
    iy, ix = int(round(cy)), int(round(cx))
    return (slice(max(0, iy - half), min(ny, iy + half + 1)),
            slice(max(0, ix - half), min(nx, ix + half + 1)))


def plot_lesions(path: Path, jobs: Sequence[Any], outputs: Sequence[Mapping[str, Any]],
                 per_case: Mapping[str, Any], counts_levels: Sequence[float],
                 methods: Sequence[str], labels: Mapping[str, str],
                 diffusion: Sequence[str]) -> Path | None:
    """Zoomed crops around every lesion of the first subject, realisation 0, each count level:
    reference (lesion outline cyan, background shell yellow), every non-diffusion method at its
    best parameter, every diffusion method's posterior mean and std at its best parameter.
    Returns ``None`` (no figure) when the scans have no lesions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subject = jobs[0].subject
    rows = []
    for c in counts_levels:
        i = next(k for k, j in enumerate(jobs)
                 if j.counts == c and j.subject == subject and j.realisation == 0)
        setup = lesion_setup(outputs[i].get("lesion_labels"), outputs[i]["masks"])
        if setup is None:
            continue
        for label in sorted(setup["backgrounds"]):
            rows.append((c, i, setup, label))
    if not rows:
        return None
    cols: list[tuple[str, str]] = [("reference", "")]
    for m in methods:
        cols.append((m, "image"))
        if m in diffusion:
            cols.append((m, "std"))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.75 * len(cols), 2.3 * len(rows)),
                             squeeze=False)
    margin = int(SHELL_GAP + SHELL_WIDTH) + 4
    for r, (c, i, setup, label) in enumerate(rows):
        o, case = outputs[i], per_case[f"{c:g}/{subject}"]
        les = setup["labels"] == label
        z = int(np.argmax(les.reshape(les.shape[0], -1).sum(axis=1)))
        box = _crop_box(les[z], margin)
        ref = o["reference"][z][box]
        vmax = float(ref.max()) * 1.1 or 1.0
        for ax, (m, what) in zip(axes[r], cols):
            if m == "reference":
                rec = scan_lesions(o["reference"], o["reference"], setup)[str(label)]
                ax.imshow(ref, cmap="gray", vmin=0, vmax=vmax)
                ax.contour(setup["backgrounds"][label][z][box], levels=[0.5], colors="y",
                           linewidths=0.5)
                title = (f"lesion {subject}/{label}, {c:g} counts/mm^3\n{rec['kind']}, true "
                         f"contrast {rec['true_contrast']:.2f}")
            else:
                b = case["methods"][m]["best"]
                run = o["runs"][m][b]
                lr = case["methods"][m]["sweep"][b].get("lesions", {}).get(str(label), {})
                if what == "std":
                    if "std" not in run:
                        ax.axis("off")
                        continue
                    std = run["std"][z][box]
                    ax.imshow(std, cmap="magma", vmin=0,
                              vmax=max(float(np.percentile(std, 99.5)), 1e-12))
                    sr = lr.get("std_ratio", [math.nan])[0]
                    title = f"{labels[m]} std\nstd ratio {sr:.2f}"
                else:
                    ax.imshow(run["image"][z][box], cmap="gray", vmin=0, vmax=vmax)
                    cv = lr.get("crc", [math.nan])[0]
                    title = (f"{labels[m]}{' mean' if m in diffusion else ''} ({b:g})\n"
                             f"CRC {cv:.2f}")
            ax.contour(les[z][box], levels=[0.5], colors="c", linewidths=0.6)
            ax.set_title(title, fontsize=6)
            ax.axis("off")
    fig.suptitle(f"Lesions of test subject {subject}, noise realisation 0 (CRC and std ratio of "
                 "this realisation; grey: the reference's scale, std: each panel its own scale)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
