"""Artifact contract: export/load round trip, metadata validation, and every bad file we can name."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
import torch

from engine_plugins.export import ArtifactError, ArtifactMetadata, MetadataError, export_artifact, load_artifact
from engine_plugins.export.metadata import METADATA_FILE
from engine_plugins.export.roles import RoleCheckError
from engine_plugins.methods.lennard_jones import LennardJones, lennard_jones_metadata
from engine_plugins.nn.graph import neighbor_graph
from engine_plugins.units import UnitError, energy_factor, length_factor


@pytest.fixture()
def lj_path(tmp_path):
    return export_artifact(LennardJones([0.238], [3.4], 8.5), lennard_jones_metadata(["Ar"], 8.5), tmp_path / "lj.pt")


def _rewrite_metadata(src, dst, edit):
    """Copy an artifact, replacing its metadata JSON by edit(dict)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("extra/" + METADATA_FILE):
                d = json.loads(data)
                edit(d)
                data = json.dumps(d).encode()
            zout.writestr(item, data)
    return dst


def test_round_trip_preserves_metadata_and_numbers(lj_path):
    art = load_artifact(lj_path)
    assert art.metadata.role == "pseudo_force" and art.metadata.type_names == ["Ar"]
    assert art.metadata.content_hash.startswith("sha256:")
    assert art.metadata.provenance["engine_plugins_version"]
    pos = torch.tensor([[0.0, 0, 0], [3.8, 0, 0], [0, 3.9, 0.2]], dtype=torch.float64)
    ei, es = neighbor_graph(pos, 8.5)
    e, f = art.module(pos, torch.zeros(3, dtype=torch.long), ei, es, 3)
    ref_e, ref_f = LennardJones([0.238], [3.4], 8.5)(pos, torch.zeros(3, dtype=torch.long), ei, es, 3)
    torch.testing.assert_close(e, ref_e, rtol=0, atol=0)
    torch.testing.assert_close(f, ref_f, rtol=0, atol=0)


def test_lj_two_atoms_match_the_analytic_pair(lj_path):
    art = load_artifact(lj_path)
    r, eps, sig = 3.8, 0.238, 3.4
    pos = torch.tensor([[0.0, 0, 0], [r, 0, 0]], dtype=torch.float64)
    ei, es = neighbor_graph(pos, 8.5)
    e, f = art.module(pos, torch.zeros(2, dtype=torch.long), ei, es, 2)
    energy = 4 * eps * ((sig / r) ** 12 - (sig / r) ** 6)
    force_on_1 = 24 * eps / r * (2 * (sig / r) ** 12 - (sig / r) ** 6)  # along +x, repulsive if > 0
    assert float(e.sum()) == pytest.approx(energy, rel=1e-13)
    assert float(f[1, 0]) == pytest.approx(force_on_1, rel=1e-12)
    assert float(f[0, 0]) == pytest.approx(-force_on_1, rel=1e-12)


def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nope.pt")


def test_corrupt_file(tmp_path, lj_path):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(lj_path.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        load_artifact(bad)


def test_torchscript_file_that_is_not_an_artifact(tmp_path):
    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(ArtifactError, match="not an artifact of this package"):
        load_artifact(path)


def test_unknown_schema_version(tmp_path, lj_path):
    bad = _rewrite_metadata(lj_path, tmp_path / "future.pt", lambda d: d.update(schema_version=99))
    with pytest.raises(ArtifactError, match="schema_version.*99.*upgrade engine_plugins"):
        load_artifact(bad)


def test_foreign_format_marker(tmp_path, lj_path):
    bad = _rewrite_metadata(lj_path, tmp_path / "foreign.pt", lambda d: d.update(format="other"))
    with pytest.raises(ArtifactError, match="'format'.*not an engine_plugins artifact"):
        load_artifact(bad)


@pytest.mark.parametrize("field,value,message", [
    ("cutoff", -1.0, "'cutoff'"),
    ("role", "teleporter", "'role': unknown role"),
    ("dtype", "float16", "'dtype'"),
    ("type_names", [], "'type_names'"),
    ("units", {"length": "furlong", "energy": "eV", "time": "ps"}, "'units.length'"),
])
def test_bad_metadata_field_is_named(tmp_path, lj_path, field, value, message):
    bad = _rewrite_metadata(lj_path, tmp_path / "bad.pt", lambda d: d.update({field: value}))
    with pytest.raises(ArtifactError, match=message):
        load_artifact(bad)


def test_missing_field_is_named(tmp_path, lj_path):
    bad = _rewrite_metadata(lj_path, tmp_path / "bad.pt", lambda d: d.pop("cutoff"))
    with pytest.raises(ArtifactError, match="'cutoff': is missing"):
        load_artifact(bad)


def test_tampered_metadata_fails_the_content_hash(tmp_path, lj_path):
    bad = _rewrite_metadata(lj_path, tmp_path / "bad.pt", lambda d: d.update(cutoff=9.0))
    with pytest.raises(ArtifactError, match="content hash mismatch"):
        load_artifact(bad)
    assert load_artifact(bad, verify_hash=False).metadata.cutoff == 9.0


def test_role_signature_is_checked_at_export(tmp_path):
    meta = lennard_jones_metadata(["Ar"], 5.0)
    with pytest.raises(RoleCheckError, match="pseudo_force"):
        export_artifact(torch.nn.Linear(3, 3), meta, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_role_fields_required():
    meta = ArtifactMetadata(role="propagator", method="m", type_names=["Li"], cutoff=5.0,
                            num_message_passing_layers=3, units={"length": "angstrom", "energy": "eV", "time": "ps"})
    with pytest.raises(MetadataError, match="role_fields.delta_tau"):
        meta.validate()


def test_units_factors_and_reduced_units():
    assert length_factor("nm", "angstrom") == pytest.approx(10.0)
    assert energy_factor("kcal/mol", "kJ/mol") == pytest.approx(4.184)
    assert energy_factor("eV", "kcal/mol") == pytest.approx(23.060547830619, rel=1e-12)
    assert length_factor("lj", "lj") == 1.0
    with pytest.raises(UnitError, match="reduced"):
        energy_factor("lj", "eV")


def test_inspect_cli(lj_path):
    out = subprocess.run([sys.executable, "-m", "engine_plugins.cli", "inspect", str(lj_path), "--json"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["method"] == "lennard_jones"
    text = subprocess.run([sys.executable, "-m", "engine_plugins.cli", "inspect", str(lj_path)],
                          capture_output=True, text=True, check=True).stdout
    assert "ghost/halo width 8.5 angstrom" in text
    bad = subprocess.run([sys.executable, "-m", "engine_plugins.cli", "inspect", "/nonexistent.pt"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
