"""Per-noise-level diagnostic of a PET-DEFT h-network: where does it help the Tweedie estimate?

For validation-split pairs (``sirf_diffusion.data.pairs``, never the test split) at ``--dose``
counts/mm^3, each noise level ``t`` of ``--times`` and fixed noise, the iterate
``x = x0 + sigma(t) eps`` is denoised by the frozen prior alone (``x0_hat``) and by the
h-transformed denoiser (``x0_DEFT``, :class:`~sirf_diffusion.diffusion.htransform.DEFTDenoiser`)
and both are compared with the ground truth: NRMSE over the head, mean over the pairs.  OSEM at
its best epoch of 1-10 (12 subsets) on the same pairs is the reference line.  A good
h-network lowers the error at every ``t`` and, at the highest, approaches the posterior mean
(the quantity a few-step sampler starts from).  Example::

    python benchmarks/diagnose_deft.py --deft-model sirf_diffusion/models/deft --pairs 4
"""

from __future__ import annotations

import argparse

import torch


def diagnose(model, prior, *, dose: float, num_pairs: int, times: list[float],
             seed: int = 0) -> dict[str, list[float]]:
    """``{'t', 'sigma', 'prior', 'deft'}`` (mean NRMSE per ``t``) and ``'osem'`` (one value)."""
    from sirf_diffusion import PoissonLogLikelihood, osem
    from sirf_diffusion.data.pairs import PairConfig, noise_free_scan, draw_pair, pair_projector
    from sirf_diffusion.diffusion.htransform import DEFTDenoiser, fit_normalisation, \
        likelihood_feature
    from sirf_diffusion.metrics import nrmse

    config = PairConfig(split="val", num_subjects=max(1, num_pairs), first_subject=0)
    projector = pair_projector(config)
    den = DEFTDenoiser(prior, model.hnet)
    sched = prior.schedule
    rec = model.normalisation
    rows = {"t": list(times), "sigma": [], "prior": [0.0] * len(times),
            "deft": [0.0] * len(times), "osem": [0.0]}
    for t in times:
        ab = float(sched.alpha_bar(torch.tensor([float(t)]))[0])
        rows["sigma"].append(((1 - ab) / ab) ** 0.5)
    subjects = config.subjects()[:num_pairs]
    for i, subject in enumerate(subjects):
        pair = draw_pair(noise_free_scan(subject, 0.0, config, projector=projector), dose,
                         noise_seed=1000 + i)
        lik = pair.likelihood(projector)
        mask = torch.from_numpy(pair.masks["whole_object"])
        norm, _, _ = fit_normalisation(lik, int(rec["init_subsets"]), int(rec["init_epochs"]))
        x0 = norm.to_prior(pair.image[None])
        lik12 = PoissonLogLikelihood(pair.acquisition_model(projector, num_subsets=12),
                                     pair.prompts)
        x, best = None, float("inf")
        for _ in range(10):
            x = osem(lik12, x, num_subsets=12, num_epochs=1, progress=False)
            best = min(best, float(nrmse(x, pair.image, mask)))
        rows["osem"][0] += best / len(subjects)
        g = torch.Generator().manual_seed(seed + i)
        eps = torch.randn(x0.shape, generator=g)
        for k, sigma in enumerate(rows["sigma"]):
            xt = x0 + sigma * eps
            s = torch.tensor([sigma])
            with torch.no_grad():
                x0_hat = prior(xt, s)
                feat = likelihood_feature(lik, norm, x0_hat, model.hnet.config.gradient)
                x0_deft = den.estimate(xt, s, x0_hat, feat)
            for key, est in (("prior", x0_hat), ("deft", x0_deft)):
                err = float(nrmse(norm.from_prior(est)[0], pair.image, mask))
                rows[key][k] += err / len(subjects)
    return rows


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--deft-model", default=None, help="DEFT model folder (default: shipped)")
    p.add_argument("--dose", type=float, default=2.5, help="counts/mm^3 (default 2.5)")
    p.add_argument("--pairs", type=int, default=4, help="validation pairs (default 4)")
    p.add_argument("--times", type=float, nargs="+",
                   default=[1.0, 0.9, 0.8, 0.6, 0.4, 0.2, 0.1, 0.05],
                   help="noise levels t in (0, 1]")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pairs < 1 or any(not 0 < t <= 1 for t in args.times):
        p.error("--pairs must be >= 1 and --times in (0, 1]")
    from sirf_diffusion.diffusion import load_slice_prior
    from sirf_diffusion.samplers.deft import resolve_deft_model

    prior = load_slice_prior(precision=args.precision)
    model = resolve_deft_model(args.deft_model, precision=args.precision)
    rows = diagnose(model, prior, dose=args.dose, num_pairs=args.pairs, times=args.times)
    lines = [f"Tweedie-estimate NRMSE (head), {args.pairs} validation pairs at {args.dose:g} "
             f"counts/mm^3, DEFT model {model.path}; OSEM at its best epoch: "
             f"{rows['osem'][0]:.3f}.", "",
             "| t | sigma | prior alone | PET-DEFT |", "|---|---|---|---|"]
    for t, s, a, b in zip(rows["t"], rows["sigma"], rows["prior"], rows["deft"]):
        lines.append(f"| {t:g} | {s:.3g} | {a:.3f} | {b:.3f} |")
    md = "\n".join(lines)
    print(md)
    return md


if __name__ == "__main__":
    main()
