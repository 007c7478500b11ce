"""envs/flowsci-{cpu,cuda}.yaml stay in step with pyproject.toml: the same packages (the core
dependencies and the md extra) with the same version bounds, conda names mapped to PyPI names."""

import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs Python >= 3.11 or tomli")

ROOT = Path(__file__).resolve().parents[1]
ENVS = ("flowsci-cpu.yaml", "flowsci-cuda.yaml")
CONDA_TO_PYPI = {"pytorch": "torch", "snakemake-minimal": "snakemake"}
CONDA_ONLY = {"python", "pip", "cuda-version"}  # no PyPI dependency of flowsci


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _required() -> dict:
    """{name: SpecifierSet} of the core dependencies and the md extra."""
    project = _pyproject()
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["md"]]
    return {canonicalize_name(r.name): r.specifier for r in reqs}


def _conda_spec(entry: str) -> tuple[str, SpecifierSet, str]:
    """'pytorch >=2.2,<2.14 cpu_*' / 'numpy>=1.24' / 'python=3.11' -> (name, spec, build)."""
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*([^\s]*)\s*(\S*)", entry.strip())
    assert m, f"unreadable conda spec {entry!r}"
    name, version, build = m.groups()
    if version.startswith("="):  # conda's =X.Y means X.Y.*
        version = f"=={version.lstrip('=')}.*" if version.count("=") == 1 else version
    return name, SpecifierSet(version), build


def _env(name: str) -> tuple[dict, dict]:
    """({pypi name: SpecifierSet}, {conda name: (spec, build)} of the conda-only ones)."""
    deps = yaml.safe_load((ROOT / "envs" / name).read_text())["dependencies"]
    pkgs, conda_only = {}, {}
    for d in deps:
        if isinstance(d, dict):
            for p in d["pip"]:
                if p.startswith("-e"):
                    continue
                r = Requirement(p)
                pkgs[canonicalize_name(r.name)] = r.specifier
            continue
        conda_name, spec, build = _conda_spec(d)
        if conda_name in CONDA_ONLY:
            conda_only[conda_name] = (spec, build)
            continue
        pypi = canonicalize_name(CONDA_TO_PYPI.get(conda_name, conda_name))
        assert pypi not in pkgs, f"envs/{name}: {conda_name} twice"
        pkgs[pypi] = spec
    return pkgs, conda_only


@pytest.mark.parametrize("env", ENVS)
def test_env_has_the_pyproject_dependencies_with_the_same_bounds(env):
    pkgs, _ = _env(env)
    required = _required()
    assert set(pkgs) == set(required), (
        f"envs/{env} and pyproject.toml (dependencies + md extra) differ: only in the env "
        f"{sorted(set(pkgs) - set(required))}, only in pyproject {sorted(set(required) - set(pkgs))}")
    for name, spec in required.items():
        if str(spec) and str(pkgs[name]):
            assert pkgs[name] == spec, f"envs/{env}: {name} {pkgs[name]} but pyproject {spec}"


@pytest.mark.parametrize("env", ENVS)
def test_env_python_fits_requires_python(env):
    _, conda_only = _env(env)
    spec, _ = conda_only["python"]
    pinned = str(spec).removeprefix("==").removesuffix(".*")
    assert pinned in SpecifierSet(_pyproject()["requires-python"]), (env, str(spec))


def test_cpu_and_cuda_envs_differ_only_in_the_torch_build():
    (cpu, cpu_only), (cuda, cuda_only) = _env(ENVS[0]), _env(ENVS[1])
    assert cpu == cuda
    torch = {e: [d for d in yaml.safe_load((ROOT / "envs" / e).read_text())["dependencies"]
                 if isinstance(d, str) and d.startswith("pytorch")] for e in ENVS}
    assert _conda_spec(torch[ENVS[0]][0])[2].startswith("cpu")
    assert _conda_spec(torch[ENVS[1]][0])[2].startswith("cuda")
    assert "cuda-version" in cuda_only and "cuda-version" not in cpu_only


def test_the_rules_use_an_env_that_exists(tmp_path):
    """CONDA_ENV (common.smk) names envs/flowsci-cpu.yaml or -cuda.yaml by the config's device."""
    text = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert "envs/flowsci-{'cuda' if config['device'] == 'cuda' else 'cpu'}.yaml" in text
    for rule_file in (ROOT / "workflow" / "rules").glob("*.smk"):
        assert "envs/flowsci.yaml" not in rule_file.read_text(), rule_file.name
