"""The project as a user installs it: a wheel in a fresh virtual environment, run from a folder
outside the checkout. The pipeline, its components and the RayJob entry points come from the
installed package (`crops.pipelines`, `crops.components`, `crops.ray_jobs`), not the checkout.

The fresh environment gets the wheel itself with `pip install --no-deps`; its dependencies are
this environment's site-packages, put on its path by a plain `.pth` line (a path line adds the
folder without running the `.pth` files in it, so this environment's editable install of
crops stays out). Installing torch, Ray and the rest anew would only retest pip.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the files git knows (setuptools writes build/ into its source)."""
    out, src = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.split("\0")  # fmt: skip
    for rel in filter(None, listed):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", out, src],
        check=True, cwd=out,
    )  # fmt: skip
    (path,) = out.glob("crops-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory) -> dict[str, str]:
    """The environment of a shell in a fresh venv holding only the wheel (and the deps path)."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", root], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "crops_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "-q", wheel], check=True, cwd=root.parent
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env['PATH']}"
    env["VIRTUAL_ENV"] = str(root)
    return env


def test_the_wheel_holds_every_module_and_no_tests(wheel: Path) -> None:
    """Every .py file of crops/ and of the folders setup.py installs inside it (but their
    tests/) is in the wheel, at its installed path; a folder find_packages skips (one without
    an __init__.py) would otherwise drop a whole subpackage unseen by the editable install."""
    names = set(zipfile.ZipFile(wheel).namelist())
    installed = {"crops": "crops", "components": "crops/components"}
    installed |= {"pipelines": "crops/pipelines", "ray_jobs": "crops/ray_jobs"}
    expected = set()
    for folder, target in installed.items():
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO / folder)
            if "tests" not in rel.parts and "__pycache__" not in rel.parts:
                expected.add(f"{target}/{rel.as_posix()}")
    assert {"crops/index/build.py", "crops/evaluate/sequential.py"} <= expected
    assert {"crops/components/train/component.py", "crops/ray_jobs/train.py"} <= expected
    assert sorted(expected - names) == []
    assert "crops/k8s/platform.json" in names and "crops/mining/prompts/synthesis_v1.txt" in names
    assert not [n for n in names if "/tests/" in n or n.startswith("tests/")]


@pytest.mark.e2e
def test_an_installed_wheel_compiles_and_runs_the_tiny_pipeline_outside_the_checkout(
    venv: dict[str, str], tmp_path: Path
) -> None:
    def sh(*argv: object) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(a) for a in argv], cwd=tmp_path, env=venv, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{argv}: {done.stderr[-3000:]}"
        return done

    where = sh(
        "python", "-c",
        "import json, crops, crops.components, crops.pipelines, crops.ray_jobs.train as t;"
        "print(json.dumps([crops.__file__, crops.components.__file__, t.__file__]))",
    )  # fmt: skip
    for path in json.loads(where.stdout):
        assert Path(path).is_relative_to(venv["VIRTUAL_ENV"]), path
        assert not Path(path).is_relative_to(REPO), path
    sh("python", "-m", "crops.ray_jobs.train", "--help")
    sh("crops", "pipeline", "compile", "--out", tmp_path / "p.yaml", "--target", "cluster")
    assert "# Name: crops\n" in (tmp_path / "p.yaml").read_text()
    run = sh(
        "crops", "pipeline", "run", "--local", "--scale", "tiny", "--max-steps", "20",
        "--out", tmp_path / "run",
    )  # fmt: skip
    assert "A/B decision:" in run.stdout
    (summary,) = (tmp_path / "run").glob("crops-*/summary.json")
    tasks = json.loads(summary.read_text())["tasks"]
    assert len(tasks) == 12 and all(t["ok"] for t in tasks.values())
