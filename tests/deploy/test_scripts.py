"""The deploy scripts: scripts/kind-up.sh passes shellcheck, explains its usage and names every
missing cluster tool before doing anything."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from support.cluster import tool

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------- kind script


def test_kind_up_passes_shellcheck() -> None:
    script = REPO / "scripts" / "kind-up.sh"
    out = subprocess.run(
        [tool("shellcheck"), "--severity=style", str(script)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_kind_up_explains_its_usage_and_missing_tools(tmp_path: Path) -> None:
    """--help works anywhere; without the cluster tools it stops before doing anything and
    names every missing one."""
    script = str(REPO / "scripts" / "kind-up.sh")
    out = subprocess.run(["bash", script, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--minikube" in out.stdout
    bin_dir = tmp_path / "bin"  # a PATH with a shell and coreutils but no cluster tools
    bin_dir.mkdir()
    for name in ("bash", "env", "dirname", "cat", "uname", "mkdir", "sed", "grep", "cut"):
        found = shutil.which(name)
        if found:
            (bin_dir / name).symlink_to(found)
    out = subprocess.run(
        [str(bin_dir / "bash"), script, "--kind"],
        capture_output=True,
        text=True,
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
    )
    assert out.returncode != 0
    for missing in ("kind", "kubectl", "helm", "docker"):
        assert missing in out.stderr
    bad = subprocess.run(["bash", script, "--no-such-option"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--no-such-option" in bad.stderr
