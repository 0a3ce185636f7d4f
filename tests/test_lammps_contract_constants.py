"""The LAMMPS styles keep their own copies of the artifact contract's constants (C++ cannot import
Python); these tests read the ``constexpr`` lines of the sources and compare them with the package's
values, so a change on one side that is not made on the other fails here rather than as a
trajectory that quietly stops matching the standalone sampler's noise."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine_plugins.export import metadata
from engine_plugins.methods.propagator import prior, sampler

SRC = Path(__file__).resolve().parents[1] / "lammps" / "src"
CONSTEXPR = re.compile(r"^\s*constexpr\s+[\w:\s\*]+?\b(\w+)\s*=\s*(.+?);", re.MULTILINE)
SHIFT = re.compile(r"^uint64_t\((\d+)\)\s*<<\s*(\d+)$")


def cpp_constants(name: str) -> dict[str, object]:
    """``constexpr`` name -> value of one source file (string, int, float or ``uint64_t(a) << b``)."""
    out: dict[str, object] = {}
    for key, expr in CONSTEXPR.findall((SRC / name).read_text()):
        expr = expr.strip()
        if expr.startswith('"') and expr.endswith('"'):
            out[key] = expr[1:-1]
        elif (m := SHIFT.match(expr)) is not None:
            out[key] = int(m.group(1)) << int(m.group(2))
        elif re.fullmatch(r"-?\d+", expr):
            out[key] = int(expr)
        else:
            out[key] = float(expr)
    return out


@pytest.mark.parametrize("source", ["fix_ep_propagate.cpp", "pair_ep_torch.cpp"])
def test_artifact_format_constants_match_the_python_contract(source):
    c = cpp_constants(source)
    assert c["METADATA_FILE"] == metadata.METADATA_FILE
    assert c["FORMAT_NAME"] == metadata.FORMAT_NAME
    assert c["SCHEMA_VERSION"] == metadata.SCHEMA_VERSION


def test_propagate_fix_noise_counters_and_constants_match_the_sampler():
    c = cpp_constants("fix_ep_propagate.cpp")
    assert c["CORRECTOR_ATTEMPT_OFFSET"] == sampler.CORRECTOR_ATTEMPT_OFFSET
    assert c["PASS_ATTEMPT_STRIDE"] == sampler.PASS_ATTEMPT_STRIDE
    assert c["MAX_PASSES"] == sampler.MAX_PASSES
    assert c["KB_EV_PER_K"] == prior.KB_EV_PER_K


def test_the_parser_reads_every_constexpr_line():
    """Guard for the tests above: a constexpr the regular expression misses would make them vacuous."""
    for name in ("fix_ep_propagate.cpp", "pair_ep_torch.cpp"):
        text = (SRC / name).read_text()
        assert len(cpp_constants(name)) == len(re.findall(r"^\s*constexpr\b", text, re.MULTILINE))
