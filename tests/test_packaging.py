"""Packaging: device extras stay light, targets/recipes ship in the wheel, the README and CI agree."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import tomllib
from conftest import REPO

HEAVY = {"torch", "transformers", "optimum", "optimum-intel", "nncf"}
DEVICE_EXTRAS = ("ort", "ort-cuda", "openvino", "mlx", "qnn", "serve", "remote", "llama")


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _closure(dist: str, seen: set[str]) -> set[str]:
    """Installed transitive requirements of a distribution (what pip would pull for it)."""
    if dist in seen:
        return seen
    seen.add(dist)
    try:
        reqs = requires(dist) or []
    except PackageNotFoundError:
        return seen
    for req in reqs:
        if "extra ==" not in req:
            _closure(_name(req), seen)
    return seen


def test_device_extras_do_not_pull_torch_transformers_or_optimum():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {_name(r) for r in project["dependencies"]}
    assert not base & HEAVY
    for extra in DEVICE_EXTRAS:
        direct = {_name(r) for r in project["optional-dependencies"][extra]}
        assert not direct & HEAVY, extra
    for extra, engine in (("ort", "onnxruntime-genai"), ("openvino", "openvino-genai")):
        closure: set[str] = set()
        for req in project["optional-dependencies"][extra] + project["dependencies"]:
            _closure(_name(req), closure)
        assert engine in closure and "openvino" in closure or extra == "ort", closure
        assert not closure & HEAVY, (extra, closure & HEAVY)


def test_wheel_ships_targets_and_recipes(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("edgeslm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for toml in (REPO / "targets").glob("*.toml"):
        assert f"edgeslm/_data/targets/{toml.name}" in names
    assert "edgeslm/_data/recipes/phi-3.5-mini-instruct.toml" in names
    for text in ("evaluation.txt", "calibration.txt", "README.md"):  # the built-in texts and their licence
        assert f"edgeslm/default_texts/{text}" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_ci_runs_exactly_the_readme_test_command():
    readme_blocks = re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), flags=re.S)
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert ci_lines[-1].strip() in [b.strip() for b in readme_blocks]
    assert "pytest" in ci_lines[-1]


def test_demo_model_ships_with_the_repository():
    demo = REPO / "examples" / "models" / "phi3-docs-21m"
    assert (demo / "config.json").is_file() and (demo / "model.safetensors").stat().st_size > 40_000_000
    assert (REPO / "examples" / "eval" / "docs-heldout.txt").is_file()


def test_ruff_check_is_clean():
    # Linters skip folders named "build" by default: the build side lives in edgeslm/builder/ for that reason.
    assert not (REPO / "edgeslm" / "build").exists()
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_readme_install_table_is_the_registry_s():
    sys.path.insert(0, str(REPO / "tools"))
    from install_table import install_table

    readme = (REPO / "README.md").read_text()
    shown = readme.split("<!-- install-table -->\n", 1)[1].split("\n<!-- /install-table -->", 1)[0]
    assert shown == install_table()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    from edgeslm.registry import formats

    for spec in formats().values():
        assert spec.device_extra in extras and spec.build_extra in extras, spec.name


def test_benchmark_scripts_import_only_what_exists():
    # Benchmarks import edgeslm inside functions (after their own setup), so a renamed module would only
    # fail in a long run: resolve every `from edgeslm... import name` they contain.
    import ast
    import importlib

    for script in sorted((REPO / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgeslm"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                        (script.name, node.module, alias.name)
