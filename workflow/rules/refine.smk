# refine: samples.h5 + model.pt -> refine/{chains.h5 | particles.h5, metrics.json}
# (flowsci refine), only for runs with runs.<run>.refine.enabled (off by default). One rule
# per such run: the output file's name depends on the run's method.
# Needs from common.smk: P, RUNS, config, flowsci_cmd(stage), system_of(run).


def refine_runs():
    return [r for r in RUNS if config["runs"][r]["refine"]["enabled"]]


def _refine_path(name, run):
    return P(name).format(system=system_of(run), run=run)


def refine_outputs():
    """The refine stage's outputs of every enabled run (for the Snakefile's `rule all`)."""
    outs = []
    for r in refine_runs():
        kind = "particles" if config["runs"][r]["refine"]["method"] == "resample_move" else "chains"
        outs += [_refine_path(f"refine_{kind}", r), _refine_path("refine_metrics", r)]
    return outs


for _run in refine_runs():
    _kind = ("particles" if config["runs"][_run]["refine"]["method"] == "resample_move"
             else "chains")

    rule:
        name:
            f"refine_{_run}"
        input:
            samples=_refine_path("samples", _run),
            model=_refine_path("model", _run),
        output:
            h5=_refine_path(f"refine_{_kind}", _run),
            metrics=report(
                _refine_path("refine_metrics", _run),
                caption="../report/refine.rst",
                category="7. Refinement",
                labels={"system": system_of(_run), "run": _run, "figure": "metrics"},
            ),
        resources:
            runtime=fixed_runtime(240),
            cpus_per_task=cpus_per_task,
            mem_mb=MEM_MB["reweight"],
        log:
            _refine_path("log_refine", _run),
        benchmark:
            f"{RESULTS}/{system_of(_run)}/{_run}/benchmarks/refine.tsv"
        conda:
            CONDA_ENV
        params:
            spec=json.dumps(config["runs"][_run]["refine"], sort_keys=True),
            cmd=flowsci_cmd("refine"),
            run=_run,
        shell:
            "{params.cmd} --run {params.run} > {log} 2>&1"
