"""Plugin registry: built-ins, a third-party plugin installed through entry points, broken and duplicate plugins."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from engine_plugins.export import export_artifact, load_artifact
from engine_plugins.nn.graph import neighbor_graph
from engine_plugins.plugins import DuplicatePluginError, PluginWarning, UnknownPluginError
from engine_plugins.plugins.manager import make_plugin_manager

THIRD_PARTY = textwrap.dedent('''
    """A third-party plugin: a harmonic well around the origin as a pseudo_force method."""
    import torch
    from engine_plugins.plugins import MethodSpec, hookimpl
    from engine_plugins.export import ArtifactMetadata

    class HarmonicWell(torch.nn.Module):
        def __init__(self, k: float):
            super().__init__()
            self.k = k
        def forward(self, pos, types, edge_index, edge_shift, n_local: int):
            e = 0.5 * self.k * (pos * pos).sum(-1)
            f = -self.k * pos
            return e, f

    def build_model(k=1.0, **_):
        return HarmonicWell(k)

    def build_metadata(k=1.0, **_):
        return ArtifactMetadata(role="pseudo_force", method="harmonic_well", type_names=["X"], cutoff=1.0,
                                num_message_passing_layers=0, periodicity="nonperiodic",
                                units={"length": "angstrom", "energy": "eV", "time": "ps"},
                                role_fields={"conservative": True})

    @hookimpl
    def engine_plugins_methods():
        return [MethodSpec("harmonic_well", "pseudo_force", build_model, build_metadata,
                           description="harmonic well (third-party test plugin)")]
''')


def _install_fake_dist(root, dist, module_name, source, entry_name=None):
    """Lay out a module plus a .dist-info with an entry point, as pip would install it."""
    (root / f"{module_name}.py").write_text(source)
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[engine_plugins]\n{entry_name or dist} = {module_name}\n")


@pytest.fixture()
def third_party(tmp_path, monkeypatch):
    _install_fake_dist(tmp_path, "harmonic_plugin", "harmonic_plugin_mod", THIRD_PARTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_builtins_are_registered_with_their_source():
    pm = make_plugin_manager()
    assert pm.get_method("lennard_jones").role == "pseudo_force"
    assert "built-in" in pm.registry["methods"]["lennard_jones"].source
    assert {"openmm", "lammps"} <= set(pm.registry["engines"])
    assert "nequip" in pm.registry["backbones"]


def test_unknown_method_error_lists_known_names():
    with pytest.raises(UnknownPluginError, match="no method named 'nope'.*lennard_jones"):
        make_plugin_manager().get_method("nope")


def test_third_party_plugin_is_listed_and_usable(third_party, tmp_path):
    pm = make_plugin_manager()
    reg = pm.registry["methods"]["harmonic_well"]
    assert reg.source.startswith("harmonic_plugin:")
    spec = pm.get_method("harmonic_well")
    path = export_artifact(spec.build_model(k=2.0), spec.build_metadata(k=2.0), tmp_path / "hw.pt")
    art = load_artifact(path)
    pos = torch.tensor([[1.0, 2.0, 0.0]], dtype=torch.float64)
    ei, es = neighbor_graph(pos, 1.0)
    e, f = art.module(pos, torch.zeros(1, dtype=torch.long), ei, es, 1)
    assert float(e.sum()) == pytest.approx(0.5 * 2.0 * 5.0)
    # ... and it runs in OpenMM as a TorchForce (nm, kJ/mol)
    import openmm as mm
    from engine_plugins.engines.openmm_backend import create_pseudo_force

    system = mm.System()
    system.addParticle(1.0)
    system.addForce(create_pseudo_force(path, types=["X"]))
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions([mm.Vec3(0.1, 0.2, 0.0)])
    energy = ctx.getState(getEnergy=True).getPotentialEnergy()._value
    assert energy == pytest.approx(5.0 * 96.48533212331002, rel=1e-12)  # 5 eV in kJ/mol
    # the CLI lists it with its source
    env = dict(os.environ, PYTHONPATH=str(third_party) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "engine_plugins.cli", "plugins"], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "harmonic_well" in out and "harmonic_plugin:harmonic_plugin" in out


def test_broken_plugin_is_a_warning_not_a_failure(tmp_path, monkeypatch):
    _install_fake_dist(tmp_path, "broken_plugin", "broken_plugin_mod", "raise ImportError('missing dependency xyz')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(PluginWarning, match="broken_plugin.*missing dependency xyz"):
        pm = make_plugin_manager()
    assert pm.get_method("lennard_jones")  # the others still work


def test_plugin_whose_hook_raises_is_skipped(tmp_path, monkeypatch):
    src = ("from engine_plugins.plugins import hookimpl\n"
           "@hookimpl\ndef engine_plugins_methods():\n    raise RuntimeError('boom')\n")
    _install_fake_dist(tmp_path, "raising_plugin", "raising_plugin_mod", src)
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = make_plugin_manager()
    with pytest.warns(PluginWarning, match="boom"):
        assert "lennard_jones" in pm.registry["methods"]


def test_duplicate_name_is_an_error_naming_both(tmp_path, monkeypatch):
    src = textwrap.dedent('''
        from engine_plugins.plugins import MethodSpec, hookimpl
        @hookimpl
        def engine_plugins_methods():
            return [MethodSpec("lennard_jones", "pseudo_force", lambda **c: None)]
    ''')
    _install_fake_dist(tmp_path, "dup_plugin", "dup_plugin_mod", src)
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = make_plugin_manager()
    with pytest.raises(DuplicatePluginError, match=r"'lennard_jones' is registered twice: by .*(built-in|dup_plugin).* and by "):
        pm.registry  # noqa: B018
    msg = ""
    try:
        pm.registry  # noqa: B018
    except DuplicatePluginError as exc:
        msg = str(exc)
    assert "dup_plugin" in msg and "built-in" in msg


def test_wrong_spec_type_is_skipped_with_warning(tmp_path, monkeypatch):
    src = ("from engine_plugins.plugins import hookimpl\n"
           "@hookimpl\ndef engine_plugins_methods():\n    return ['not a spec']\n")
    _install_fake_dist(tmp_path, "sloppy_plugin", "sloppy_plugin_mod", src)
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = make_plugin_manager()
    with pytest.warns(PluginWarning, match="expected MethodSpec"):
        pm.registry  # noqa: B018
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert "lennard_jones" in pm.registry["methods"]
