"""Config: schema defaults, clear errors naming the key, consistency checks, overrides."""

from pathlib import Path

import pytest
import yaml

from flowsci.cli import main
from flowsci.config import load_config, validate_config
from flowsci.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _minimal():
    return {"systems": {"dw4": {"target": {"name": "dw4"},
                                "data": {"source": "generate", "generator": {"name": "mcmc"}}}},
            "runs": {"r": {"system": "dw4", "model": {"name": "egnn"}}}}


def test_default_config_is_valid_and_defaults_filled():
    cfg = load_config(ROOT / "config" / "config.yaml")
    assert cfg["results_dir"] == "results"
    c = validate_config(_minimal())
    assert c["runs"]["r"]["training"]["objective"]["name"] == "likelihood"
    assert c["runs"]["r"]["flow"]["method"] == "dopri5"
    assert c["systems"]["dw4"]["data"]["splits"]["train"] == 0.8


def test_schema_violation_names_the_key():
    bad = _minimal()
    bad["runs"]["r"]["training"] = {"steps": -1}
    with pytest.raises(ConfigError, match=r"runs\.r\.training\.steps"):
        validate_config(bad)
    bad = _minimal()
    bad["runs"]["r"]["flow"] = {"method": "rk45"}
    with pytest.raises(ConfigError, match=r"runs\.r\.flow\.method"):
        validate_config(bad)


def test_inconsistent_config_is_refused():
    bad = _minimal()
    bad["runs"]["r"]["system"] = "lj13"
    with pytest.raises(ConfigError, match="not a key of systems"):
        validate_config(bad)
    bad = _minimal()
    del bad["systems"]["dw4"]["data"]["generator"]
    with pytest.raises(ConfigError, match="needs 'generator'"):
        validate_config(bad)


def test_cli_reports_bad_config_clearly(tmp_path, capsys):
    cfg = _minimal()
    cfg["runs"]["r"]["training"] = {"lr": "fast"}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert "c.yaml" in err and "runs.r.training.lr" in err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    p.write_text(yaml.safe_dump(_minimal()))
    assert main(["train", "--config", str(p), "--set", "runs.r.model.params={width: 3}"]) == 2
    assert "unknown parameter" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((ROOT / "config" / "examples").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_example_configs_are_valid(path):
    cfg = load_config(path)
    assert cfg["runs"] and cfg["systems"]
