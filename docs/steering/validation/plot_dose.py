"""Figure of docs/steering.md section 5.3: NRMSE against K for PET-LiSch and PET-LiSch-SCD per
dose, from ``benchmarks/evaluate_steering.py`` outputs (``results.json``), with OSEM and
MAP-EM-RDP at their best as lines.

    python docs/steering/validation/plot_dose.py docs/steering/amyloid-2.5-4chains \\
        docs/steering/amyloid-10-4chains --out docs/steering/dose.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def curves(folder: Path) -> tuple[float, dict[str, tuple[list[float], np.ndarray]]]:
    """Counts and, per method, the parameters and the NRMSE of every case and realisation."""
    data = json.loads((folder / "results.json").read_text())
    counts = float(data["settings"]["counts"])
    cases = list(data["results"]["amyloid"]["per_case"].values())
    out = {}
    for m in ("osem", "mapem-rdp", "lisch", "lisch-scd"):
        values = sorted(cases[0]["methods"][m]["sweep"], key=float)
        nrmse = np.array([[r for c in cases for r in c["methods"][m]["sweep"][v]["metrics"]
                           ["nrmse"]] for v in values])
        out[m] = ([float(v) for v in values], nrmse)
    return counts, out


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    fig, axes = plt.subplots(1, len(args.folders), figsize=(4.2 * len(args.folders), 3.4),
                             squeeze=False)
    for ax, folder in zip(axes[0], args.folders):
        counts, c = curves(folder)
        for m, style, label in (("lisch", "o-", "PET-LiSch"), ("lisch-scd", "s", "LiSch-SCD")):
            k, n = c[m]
            ax.errorbar(k, n.mean(1), n.std(1, ddof=1), fmt=style, capsize=3, label=label)
        for m, color, label in (("osem", "gray", "OSEM (best)"),
                                ("mapem-rdp", "k", "MAP-EM-RDP (best)")):
            best = c[m][1].mean(1).min()
            ax.axhline(best, color=color, ls="--", lw=1, label=label)
        ax.set_title(f"amyloid, {counts:g} counts/mm$^3$ (test subjects)", fontsize=9)
        ax.set_xlabel("K (MLEM-equivalent iterations)")
        ax.set_ylabel("NRMSE (mean ± std)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(args.out)


if __name__ == "__main__":
    main()
