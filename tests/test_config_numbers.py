"""Config values are read as YAML 1.2 numbers: `1e-2` is 0.01 in a file, in --set and in
Snakemake's config, not the string PyYAML (YAML 1.1) makes of it."""

import pytest
import yaml

from flowsci.config import load_config, validate_config

BASE = {"systems": {"dw4": {"target": {"name": "dw4"}, "data": {
    "source": "generate", "generator": {"name": "mcmc", "params": {"step_size": "5e-2"}}}}},
    "runs": {"r": {"system": "dw4", "model": {"name": "egnn"}}}}


@pytest.mark.parametrize("text, value", [("1e-2", 0.01), ("5E3", 5000.0), ("2e+1", 20.0),
                                         (".5e1", 5.0), ("1.5e-3", 0.0015)])
def test_set_reads_exponent_numbers(tmp_path, text, value):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    cfg = load_config(path, [f"runs.r.training.lr={text}"])
    assert cfg["runs"]["r"]["training"]["lr"] == value
    assert isinstance(cfg["runs"]["r"]["training"]["lr"], float)


def test_files_and_free_params_read_exponent_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("systems:\n  dw4:\n    target: {name: dw4}\n    data:\n      source: generate\n"
                    "      generator: {name: mcmc, params: {step_size: 5e-2}}\n"
                    "runs:\n  r: {system: dw4, model: {name: egnn}, training: {lr: 1e-3}}\n")
    cfg = load_config(path)
    assert cfg["runs"]["r"]["training"]["lr"] == 0.001
    assert cfg["systems"]["dw4"]["data"]["generator"]["params"]["step_size"] == 0.05
    # Snakemake hands over an already-parsed config (with the strings): same result
    assert validate_config(BASE)["systems"]["dw4"]["data"]["generator"]["params"]["step_size"] == 0.05


def test_strings_that_only_look_numeric_stay_strings(tmp_path):
    cfg = validate_config({**BASE, "results_dir": "runs1e5x"})
    assert cfg["results_dir"] == "runs1e5x"
