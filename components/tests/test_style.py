"""The components' style, across every components/<name>/ folder: lightweight on the project image,
stdlib-and-kfp-only top-level imports, no registry host, the image overridden for a compile; and
the layout."""

from pathlib import Path

import pytest

from crops.components import BASE_IMAGE, DEFAULT_IMAGE
from crops.components.abtest import abtest
from crops.components.deploy import deploy
from crops.components.evaluate import evaluate
from crops.components.index import index
from crops.components.ingest import ingest
from crops.components.mine import mine
from crops.components.serve_llm import release_llm, serve_llm
from crops.components.simulate import simulate
from crops.components.train import train
from crops.components.validate import validate

ALL = (simulate, ingest, validate, mine, train, index, evaluate, deploy, abtest)
COMPONENTS = Path(__file__).resolve().parent.parent  # components/


@pytest.mark.parametrize("component", ALL, ids=lambda c: c.name)
def test_components_are_lightweight_on_the_project_image(component) -> None:
    container = component.component_spec.implementation.container
    assert container.image == BASE_IMAGE == DEFAULT_IMAGE == "crops:0.1.0"
    command = " ".join(container.command)
    assert "pip install" not in command  # the image carries crops and kfp
    assert "kfp.dsl.executor_main" in command


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in COMPONENTS.glob("*/component.py")))
def test_top_level_imports_are_stdlib_and_kfp_only(folder: str) -> None:
    """crops.* (and everything heavy) is imported inside the function body."""
    import ast
    import sys

    allowed = {"crops.components"}
    tree = ast.parse((COMPONENTS / folder / "component.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = (
                [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            )
            for name in names:
                light = name.split(".")[0] in (*sys.stdlib_module_names, "kfp")
                assert light or name in allowed, name
    assert (COMPONENTS / folder / "README.md").is_file()


def test_no_registry_host_in_any_image_name() -> None:
    for path in [*COMPONENTS.rglob("*.py"), *COMPONENTS.rglob("*.md"), *COMPONENTS.rglob("*.yaml")]:
        if path == Path(__file__).resolve():
            continue  # this test names the hosts it looks for
        text = path.read_text()
        assert "docker.io" not in text and "ghcr.io" not in text and "quay.io" not in text, path


def test_the_image_can_be_overridden_for_a_compile(monkeypatch) -> None:
    import runpy

    monkeypatch.setenv("CROPS_IMAGE", "crops:9.9.9")
    assert runpy.run_path(str(COMPONENTS / "__init__.py"))["BASE_IMAGE"] == "crops:9.9.9"


# ----------------------------------------------------------------------------- the layout

FOLDERS = sorted(
    p.name for p in COMPONENTS.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"
)


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_component_folder_has_its_code_readme_metadata_and_tests(folder: str) -> None:
    """The kubeflow/pipelines-components layout: component.py, README.md, metadata.yaml and
    tests/ with at least one test file in every components/<name>/."""
    path = COMPONENTS / folder
    for name in ("component.py", "README.md", "metadata.yaml"):
        assert (path / name).is_file(), path / name
    assert sorted((path / "tests").glob("test_*.py")), path / "tests"


def test_the_readmes_and_metadata_are_what_the_generator_writes() -> None:
    """scripts/gen_component_readmes.py --check: no README.md, metadata.yaml or the index in
    components/README.md drifts from component.py (run the script without --check to fix)."""
    import runpy

    script = COMPONENTS.parent / "scripts" / "gen_component_readmes.py"
    check = runpy.run_path(str(script))["check"]
    assert check(COMPONENTS.parent) == []


@pytest.mark.parametrize("component", [*ALL, serve_llm, release_llm], ids=lambda c: c.name)
def test_the_source_runs_alone_as_the_executor_runs_it(component) -> None:
    """KFP ships the function's source text to the task (the program is the command's last
    item, its own imports first): a default naming a module-level constant, such as a
    config's default, is a NameError there, so an unset setting is `Optional[...] = None`
    and the body takes the config's default."""
    container = component.component_spec.implementation.container
    program = container.command[-1]
    assert program.lstrip().startswith("import kfp"), program[:200]
    namespace: dict = {}
    exec(compile(program, f"<{component.name} as shipped>", "exec"), namespace)
    function = container.args[container.args.index("--function_to_execute") + 1]
    assert callable(namespace[function])
