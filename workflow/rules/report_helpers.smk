# Helpers of the report rules (report.smk): figure outputs with categories and labels, the
# captions owned by each system's observable set, and the list of final outputs.
# Needs from common.smk: P, RUNS, config, system_of(run).

REPORT_FIGURES = {  # file stem -> report category (same five figures for every system kind)
    "energy": "1. Energy",
    "weights": "2. Importance weights",
    "training": "3. Training",
    "observables": "4. Structure",
    "correlations": "5. Correlations",
}


def _rp_labels(wildcards):
    spec = config["runs"][wildcards.run]
    objective = spec.get("training", {}).get("objective", {}).get("name", "likelihood")
    return {"system": wildcards.system, "run": wildcards.run,
            "model": spec["model"]["name"], "objective": objective}


def _rp_figure(stem):
    return report(
        f"{P('figures')}/{stem}.png",
        caption=f"../report/{stem}.rst",
        category=REPORT_FIGURES[stem],
        subcategory="{system}",
        labels=_rp_labels,
    )


def report_outputs():
    """Every final output of the report stage (for the Snakefile's `rule all`)."""
    outs = [P("summary")]
    for r in RUNS:
        names = {"system": system_of(r), "run": r}
        outs += [f"{P('figures')}/{stem}.png".format(**names) for stem in REPORT_FIGURES]
        outs += [P(t).format(**names) for t in ("table_html", "table_csv")]
    return outs


def _rp_captions(wildcards):
    """Captions of the kind-specific figures, owned by the system's observable set (the same
    one the reweight stage uses; imported here lazily: it needs torch for the target)."""
    from flowsci.analysis.observables import observable_set
    from flowsci.systems import build_target

    spec = config["systems"][wildcards.system]
    kind = build_target(spec["target"], f"systems.{wildcards.system}.target").kind
    obs = observable_set(spec["target"]["name"], kind, spec.get("observables"),
                         config_key=f"systems.{wildcards.system}.observables")
    return obs.captions
