"""Package layout: the library in crops/, and three top-level folders installed inside it.

`components/`, `pipelines/` and `ray_jobs/` stay where a Kubeflow or KubeRay user looks for
them, and install as `crops.components`, `crops.pipelines` and `crops.ray_jobs`, so that an
installed project (a wheel, the image) has them on its path with no checkout. `tests/`
folders are not installed. Everything else about the project is in pyproject.toml.
"""

from setuptools import find_packages, setup

#: top-level folder -> the package it installs as
MAPPED = {
    "components": "crops.components",
    "pipelines": "crops.pipelines",
    "ray_jobs": "crops.ray_jobs",
}
TESTS = ["tests", "tests.*", "*.tests", "*.tests.*"]


def layout(root: str = ".") -> tuple[list[str], dict[str, str]]:
    """(packages, package_dir) for the source tree at `root`."""
    packages = find_packages(root, include=["crops", "crops.*"], exclude=TESTS)
    package_dir = {}
    for folder, name in MAPPED.items():
        package_dir[name] = folder
        packages += [name] + [
            f"{name}.{p}" for p in find_packages(f"{root}/{folder}", exclude=TESTS)
        ]
    return packages, package_dir


if __name__ == "__main__":  # setuptools runs this file as __main__
    packages, package_dir = layout()
    setup(packages=packages, package_dir=package_dir)
