"""Shared by the benchmark scripts: the machine/version line, the command line, and rewriting one ``##`` section of
BENCHMARKS.md while leaving every other section alone."""
from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]

PREAMBLE = """# Benchmarks

Results of the scripts in `benchmarks/` (how to run them: `benchmarks/README.md`). One `##` section per
benchmark; each script rewrites only its own section when run with `--write`, so sections can be refreshed
independently. Every section states its exact command, machine, library versions and date.

"""

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def package_version(name: str) -> str:
    """Installed distribution version of ``name``, or ``n/a``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "n/a"


def machine(packages: Sequence[str] = (), extra: dict[str, str] | None = None) -> dict[str, str]:
    """``nproc``, CPU model, Python/torch versions, ``packages`` versions (keys with ``_`` for ``-``), commit, date.

    ``extra`` entries are added last (e.g. a version read from the module itself).
    """
    import torch

    # the CPUs this process may use (what ``nproc`` prints without OMP_NUM_THREADS, which benchmarks often set)
    nproc = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        rev = "unknown"
    env = {"nproc": nproc, "cpu": cpu, "python": platform.python_version(), "torch": torch.__version__}
    env.update({name.replace("-", "_"): package_version(name) for name in packages})
    env.update(extra or {})
    env.update(commit=rev, date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               load="/".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a")
    return env


def command_line(argv: list[str]) -> str:
    """The command that produced a section, with paths inside the repository made relative to it."""
    def rel(p: str) -> str:
        try:
            return os.path.relpath(Path(p).absolute(), REPO) if Path(p).absolute().is_relative_to(REPO) else p
        except ValueError:
            return p
    threads = [f"{k}={os.environ[k]}" for k in THREAD_VARS if k in os.environ]  # they change what is measured
    return " ".join(threads + [rel(sys.executable), rel(sys.argv[0])] + [shlex.quote(a) for a in argv])


def provenance(argv: list[str], env: dict[str, str], libs: Sequence[str] = ()) -> list[str]:
    """The closing lines of a section: the command, then machine, versions (``libs`` named as installed), commit, date."""
    versions = "".join(f", {name} {env[name.replace('-', '_')]}" for name in libs)
    return [f"Command: `{command_line(argv)}`", "",
            f"Machine: {env['nproc']} CPUs (`nproc`), {env['cpu']}; Python {env['python']}, torch {env['torch']}"
            f"{versions}; commit {env['commit']}; {env['date']}; load average (1/5/15 min) {env.get('load', 'n/a')} "
            f"when the section was written.", ""]


def publish(section: str, write: bool) -> None:
    """Print a report section and, with ``write`` (the scripts' ``--write``), put it into BENCHMARKS.md."""
    print(section)
    if write:
        write_section(REPO / "BENCHMARKS.md", section)


def write_section(path: Path, section: str, first: bool = False) -> None:
    """Replace the ``##`` section whose heading is ``section``'s first line in ``path``; a new section goes at the
    end (``first``: before the first other section). Headings inside fenced code blocks are ignored."""
    heading = section.splitlines()[0].strip()
    text = path.read_text() if path.exists() else PREAMBLE
    lines = text.splitlines()
    headings, fenced = [], False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("## "):
            headings.append(i)
    mine = [i for i in headings if lines[i].strip() == heading]
    new = section.rstrip("\n").splitlines() + [""]
    if mine:
        start = mine[0]
        end = next((i for i in headings if i > start), len(lines))
        lines[start:end] = new
    elif first and headings:
        lines[headings[0]:headings[0]] = new
    else:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += [""] + new
    from yolo_prune.fileio import write_text_atomic

    write_text_atomic(path, "\n".join(lines).rstrip("\n") + "\n")  # never a half-written BENCHMARKS.md
