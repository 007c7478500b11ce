# flowsci workflow: preprocess -> train -> sample -> reweight -> report
# (and sample -> refine for runs with runs.<run>.refine.enabled).
# Run: snakemake --cores all   (report: snakemake --report report.html)
from snakemake.utils import min_version

min_version("8.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/reweight.smk"
include: "workflow/rules/refine.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/export.smk"


# Cheap jobs run on the submitting host, never through a cluster queue.
localrules:
    all,
    sample_gather,
    report_run,
    report_summary,


rule all:
    input:
        report_outputs(),
        refine_outputs(),
    default_target: True
