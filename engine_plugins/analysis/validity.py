"""Validity of generated structures and screening metrics.

**Molecules** (:func:`check_molecule`): bonds are perceived from the 3D coordinates alone with
RDKit (``rdDetermineBonds``, its defaults: "connect-the-dots" connectivity from covalent radii,
a C–C bond up to 1.97 Å, C–H 1.52 Å; or, with ``cov_factor``, the van der Waals method with
radii × ``cov_factor``), then bond orders for a total charge of 0 (charged fragments allowed, as
in xyz2mol: a broken bond can so show up as an ion pair rather than two radicals). Where no bond-order assignment with charge 0 exists (a missing or extra
hydrogen, a broken bond, ...) the check falls back to *connectivity only* (every bond single,
hydrogens never added) and says so in ``bond_perception``; such a molecule then shows up as
radicals or as a failed sanitisation. Each check is reported separately:

- ``sanitizes``: RDKit sanitisation of the perceived molecule succeeds (valences, aromaticity);
- ``neutral``: total formal charge 0 (``n_charged_atoms`` counts zwitterionic charges apart);
- ``no_radicals``: no unpaired electrons on any atom;
- ``one_fragment``: the bond graph is connected;
- ``same_formula``: the element counts equal the source molecule's (with hydrogens);
- ``same_graph``: the molecular graph equals the source's.

``valid`` = sanitizes ∧ neutral ∧ no radicals ∧ one fragment: GPFF's definition of validity;
``valid_and_same_graph`` adds that the molecule is the one it should be.

*How "same graph" is decided, and why.* Graph isomorphism (networkx VF2) of the all-atom
connectivity graphs with element labels, hydrogens included, is the criterion; bond orders and
stereochemistry are not compared. For neutral, closed-shell molecules the connectivity with
explicit hydrogens fixes the constitution (bond orders follow from the valences up to resonance),
so this is a check of constitution that does not depend on which Kekulé/charge-separated form the
bond-order solver picks, and it still works when bond orders could not be assigned. It catches
constitutional isomers and tautomers (the H moves). The canonical-SMILES comparison (stereo
removed) is reported beside it as ``same_smiles``; it needs bond orders and agrees with
``same_graph`` whenever both molecules sanitise.

**Crystals** (:func:`match_crystal`): pymatgen ``StructureMatcher`` against the reference
prototype (pymatgen's tolerances ltol 0.2, stol 0.3, angle_tol 5°, volume scaling allowed; a
supercell is compared with the same supercell of the prototype rather than through primitive
reduction, which fails on noisy cells), and the fraction matched over a set.

**Screening** (:func:`rank_correlation`, :func:`fraction_ranked_correctly`): does a
pseudo-energy rank each equilibrium structure below its own perturbed copies and decoys, and does
it grow with the perturbation size (Spearman)?

Over many structures: :func:`validity_report` (plain function), and
:class:`MoleculeValidityAnalysis`, an MDAnalysis ``AnalysisBase`` over the frames of a trajectory
(a relaxation or denoising run written by OpenMM or LAMMPS), with the usual prepare / per frame /
conclude steps and ``results``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from engine_plugins.data.molecules import Structure

MOLECULE_CHECKS = ("sanitizes", "neutral", "no_radicals", "one_fragment", "same_formula", "same_graph")


# --------------------------------------------------------------------------------------------
# Bond perception
# --------------------------------------------------------------------------------------------

@dataclass
class PerceivedBonds:
    """An RDKit molecule (all atoms explicit, 3D conformer) with bonds perceived from 3D."""

    mol: Any
    bond_orders: bool  # False: connectivity only (bond-order assignment with charge 0 failed)
    sanitizes: bool
    bond_order_error: str | None = None
    sanitize_error: str | None = None


def _xyz_mol(symbols: Sequence[str], positions: np.ndarray):
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    rw = Chem.RWMol()
    for s in symbols:
        a = Chem.Atom(str(s))
        a.SetNoImplicit(True)  # hydrogens are the ones in the structure, never added
        rw.AddAtom(a)
    conf = Chem.Conformer(len(symbols))
    for i, p in enumerate(np.asarray(positions, float)):
        conf.SetAtomPosition(i, Point3D(*map(float, p)))
    conf.Set3D(True)
    rw.AddConformer(conf, assignId=True)
    return rw.GetMol()


def perceive_bonds(symbols: Sequence[str], positions: np.ndarray, charge: int = 0, cov_factor: float | None = None,
                   max_iterations: int = 100_000) -> PerceivedBonds:
    """Bonds from 3D with RDKit: connectivity then bond orders for total ``charge``; on failure,
    connectivity only (reported). ``cov_factor`` None: RDKit's default connect-the-dots
    connectivity; a number: the van der Waals method with covalent radii × ``cov_factor``.
    ``max_iterations`` bounds the bond-order search, which can blow up on badly over-connected
    (noisy) geometries; exceeding it counts as a bond-order failure."""
    from rdkit import Chem, rdBase
    from rdkit.Chem import rdDetermineBonds

    positions = np.asarray(positions, float)
    if len(symbols) == 0:
        raise ValueError("perceive_bonds: no atoms")
    if not np.isfinite(positions).all():
        raise ValueError("perceive_bonds: non-finite (NaN/inf) coordinates")
    with rdBase.BlockLogs():  # quiet RDKit; the caller's log settings come back after
        mol = _xyz_mol(symbols, positions)
        order_error = None
        try:
            if cov_factor is None:
                rdDetermineBonds.DetermineConnectivity(mol, useHueckel=False, charge=charge)
            else:
                rdDetermineBonds.DetermineConnectivity(mol, useHueckel=False, charge=charge, covFactor=cov_factor,
                                                       useVdw=True)
            conn = Chem.Mol(mol)
            rdDetermineBonds.DetermineBondOrders(mol, charge=charge, allowChargedFragments=True,
                                                 embedChiral=False, maxIterations=max_iterations)
            orders = True
        except Exception as exc:  # ValueError (no assignment), MaxFindBondOrdersItersExceeded, ...
            order_error = f"{type(exc).__name__}: {exc}"
            mol = conn if "conn" in locals() else _xyz_mol(symbols, positions)
            orders = False
        sanitize_error = None
        try:
            Chem.SanitizeMol(mol)
            ok = True
        except Exception as exc:
            sanitize_error = f"{type(exc).__name__}: {exc}"
            ok = False
            mol.UpdatePropertyCache(strict=False)
    return PerceivedBonds(mol, orders, ok, order_error, sanitize_error)


# --------------------------------------------------------------------------------------------
# Molecule validity
# --------------------------------------------------------------------------------------------

@dataclass
class MoleculeValidity:
    """Every check of one structure against its source molecule (``None``: no source given)."""

    name: str
    n_atoms: int
    formula: str
    bond_perception: str  # "bond orders (charge 0)" (the requested charge) or "connectivity only"
    sanitizes: bool
    neutral: bool
    no_radicals: bool
    one_fragment: bool
    same_formula: bool | None
    same_graph: bool | None
    same_smiles: bool | None
    total_charge: int
    n_charged_atoms: int
    n_radical_electrons: int
    n_fragments: int
    smiles: str | None  # perceived, canonical, no stereo (None when it does not sanitise)
    source_smiles: str | None
    source_formula: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """GPFF's validity: sanitises, neutral, no radicals, one fragment."""
        return bool(self.sanitizes and self.neutral and self.no_radicals and self.one_fragment)

    @property
    def valid_and_same_graph(self) -> bool:
        return bool(self.valid and self.same_graph)

    def failed(self) -> list[str]:
        """Names of the checks that failed."""
        return [c for c in MOLECULE_CHECKS if getattr(self, c) is False]

    def summary(self) -> str:
        bad = self.failed()
        details = {"one_fragment": f"{self.n_fragments} fragments", "no_radicals": f"{self.n_radical_electrons} radical e-",
                   "neutral": f"charge {self.total_charge}", "same_formula": f"{self.formula} vs {self.source_formula}",
                   "same_graph": f"{self.smiles} vs {self.source_smiles}", "sanitizes": "; ".join(self.notes)}
        text = "valid" if self.valid else "invalid"
        if bad:
            text += "; failed: " + ", ".join(f"{c} ({details[c]})" for c in bad)
        return f"{text}; bonds: {self.bond_perception}"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(valid=self.valid, valid_and_same_graph=self.valid_and_same_graph)
        return d


def _graph_from_mol(mol):
    import networkx as nx

    g = nx.Graph()
    for a in mol.GetAtoms():
        g.add_node(a.GetIdx(), element=a.GetSymbol())
    g.add_edges_from((b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds())
    return g


def _graph_from_bonds(symbols: Sequence[str], bonds: Sequence[tuple]):
    import networkx as nx

    g = nx.Graph()
    for i, s in enumerate(symbols):
        g.add_node(i, element=s)
    g.add_edges_from((int(b[0]), int(b[1])) for b in bonds)
    return g


def same_molecular_graph(g1, g2) -> bool:
    """Element-labelled graph isomorphism (networkx VF2), with cheap invariants checked first."""
    import networkx as nx
    from networkx.algorithms.isomorphism import categorical_node_match

    if g1.number_of_nodes() != g2.number_of_nodes() or g1.number_of_edges() != g2.number_of_edges():
        return False
    inv = lambda g: sorted((d["element"], g.degree(n)) for n, d in g.nodes(data=True))  # noqa: E731
    if inv(g1) != inv(g2):
        return False
    return nx.is_isomorphic(g1, g2, node_match=categorical_node_match("element", None))


def _source_graph(source) -> tuple[Any, str | None, str | None]:
    """(graph, canonical SMILES without stereo, Hill formula) of a source molecule."""
    from rdkit import Chem

    from engine_plugins.data.molecules import hill_formula

    if hasattr(source, "symbols") and hasattr(source, "positions"):  # a Structure (duck-typed)
        if source.bonds is not None:
            smi = _canonical_no_stereo(source.smiles) if source.smiles else None
            return _graph_from_bonds(source.symbols, source.bonds), smi, hill_formula(source.symbols)
        if source.smiles is None:
            raise ValueError(f"source structure '{source.name}' has neither bonds nor SMILES")
        source = source.smiles
    if isinstance(source, str):
        mol = Chem.MolFromSmiles(source)
        if mol is None:
            raise ValueError(f"source SMILES '{source}' does not parse in RDKit")
    else:
        mol = Chem.Mol(source)
    mol = Chem.AddHs(mol)
    smi = Chem.MolToSmiles(Chem.RemoveHs(mol), isomericSmiles=False)
    return _graph_from_mol(mol), smi, hill_formula(a.GetSymbol() for a in mol.GetAtoms())


def _canonical_no_stereo(smiles: str) -> str | None:
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol, isomericSmiles=False)


def check_molecule(structure: "Structure", source=None, charge: int = 0, cov_factor: float | None = None,
                   name: str | None = None) -> MoleculeValidity:
    """Validity of one 3D structure, and whether it is its source molecule.

    ``structure`` is a :class:`~engine_plugins.data.molecules.Structure` (or a pair
    ``(symbols, positions)``); ``source`` a SMILES, an RDKit ``Mol`` or a ``Structure`` with
    bonds or SMILES; default: the structure's own ``smiles``. Without a source, the
    ``same_*`` checks are ``None``.
    """
    from rdkit import Chem, rdBase

    from engine_plugins.data.molecules import Structure, hill_formula

    if not (hasattr(structure, "symbols") and hasattr(structure, "positions")):
        symbols, positions = structure
        structure = Structure(list(symbols), positions)
    if source is None:
        source = structure.smiles
    p = perceive_bonds(structure.symbols, structure.positions, charge=charge, cov_factor=cov_factor)
    mol = p.mol
    notes = []
    if not p.bond_orders:
        notes.append(f"bond orders: {p.bond_order_error}")
    if not p.sanitizes:
        notes.append(f"sanitize: {p.sanitize_error}")
    total_charge = sum(a.GetFormalCharge() for a in mol.GetAtoms())
    n_charged = sum(a.GetFormalCharge() != 0 for a in mol.GetAtoms())
    n_rad = sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms())
    n_frag = len(Chem.GetMolFrags(mol, sanitizeFrags=False))
    smiles = None
    if p.sanitizes:
        with rdBase.BlockLogs():
            try:
                smiles = Chem.MolToSmiles(Chem.RemoveHs(mol), isomericSmiles=False)
            except Exception:
                smiles = Chem.MolToSmiles(mol, isomericSmiles=False)
    formula = hill_formula(structure.symbols)
    same_formula = same_graph = same_smiles = None
    src_smiles = src_formula = None
    if source is not None:
        g_src, src_smiles, src_formula = _source_graph(source)
        same_formula = formula == src_formula
        same_graph = same_formula and same_molecular_graph(_graph_from_mol(mol), g_src)
        same_smiles = None if (smiles is None or src_smiles is None) else smiles == src_smiles
    return MoleculeValidity(
        name=name if name is not None else structure.name, n_atoms=structure.n_atoms, formula=formula,
        bond_perception=f"bond orders (charge {charge})" if p.bond_orders else "connectivity only",
        sanitizes=p.sanitizes, neutral=total_charge == 0, no_radicals=n_rad == 0, one_fragment=n_frag == 1,
        same_formula=same_formula, same_graph=same_graph, same_smiles=same_smiles, total_charge=int(total_charge),
        n_charged_atoms=int(n_charged), n_radical_electrons=int(n_rad), n_fragments=int(n_frag), smiles=smiles,
        source_smiles=src_smiles, source_formula=src_formula, notes=notes)


def summarize_validity(results: Sequence[MoleculeValidity]) -> dict[str, Any]:
    """Fractions passing each check, ``valid`` and ``valid_and_same_graph``, over many results."""
    n = len(results)
    out: dict[str, Any] = {"n": n}
    if n == 0:
        return out
    for c in MOLECULE_CHECKS:
        vals = [getattr(r, c) for r in results if getattr(r, c) is not None]
        out[c] = float(np.mean(vals)) if vals else None
    out["valid"] = float(np.mean([r.valid for r in results]))
    with_source = [r for r in results if r.same_graph is not None]
    out["valid_and_same_graph"] = float(np.mean([r.valid_and_same_graph for r in with_source])) if with_source else None
    out["connectivity_only"] = float(np.mean([r.bond_perception == "connectivity only" for r in results]))
    # stricter: valid with no formal charge on any atom (no zwitterion such as [CH2-][OH2+])
    out["valid_no_charged_atoms"] = float(np.mean([r.valid and r.n_charged_atoms == 0 for r in results]))
    return out


def validity_report(structures: Sequence["Structure"], sources: Sequence | None = None,
                    charge: int = 0, cov_factor: float | None = None) -> tuple[dict[str, Any], list[MoleculeValidity]]:
    """Check many structures (prepare / per structure / conclude): returns the summary of
    :func:`summarize_validity` and the per-structure results. ``sources`` defaults to each
    structure's own SMILES."""
    if sources is not None and len(sources) != len(structures):
        raise ValueError(f"{len(structures)} structures but {len(sources)} sources")
    results = [check_molecule(s, None if sources is None else sources[k], charge=charge, cov_factor=cov_factor)
               for k, s in enumerate(structures)]
    return summarize_validity(results), results


def _make_analysis_class():
    from MDAnalysis.analysis.base import AnalysisBase

    class MoleculeValidityAnalysis(AnalysisBase):
        """Molecular validity of every frame of a trajectory (MDAnalysis ``AnalysisBase``).

        ``MoleculeValidityAnalysis(atomgroup, source).run()``: ``atomgroup`` holds the molecule's
        atoms (elements from ``atomgroup.elements``, else the first letter of each name);
        ``source`` is its SMILES (or RDKit Mol, or Structure). After ``run()``:
        ``results.per_frame`` (a :class:`MoleculeValidity` per frame), ``results.<check>`` (a
        boolean array per check, and ``valid`` and ``valid_and_same_graph``) and
        ``results.summary`` (fractions, as :func:`summarize_validity`).
        """

        def __init__(self, atomgroup, source, charge: int = 0, cov_factor: float | None = None, **kwargs):
            super().__init__(atomgroup.universe.trajectory, **kwargs)
            self._ag = atomgroup
            self._source = source
            self._charge = charge
            self._cov_factor = cov_factor

        def _prepare(self):
            if hasattr(self._ag, "elements"):
                self._symbols = [str(e).capitalize() for e in self._ag.elements]
            else:
                self._symbols = ["".join(ch for ch in str(n) if ch.isalpha())[:1] for n in self._ag.names]
            self.results.per_frame = []

        def _single_frame(self):
            from engine_plugins.data.molecules import Structure

            s = Structure(self._symbols, self._ag.positions.astype(np.float64), name=f"frame {self._ts.frame}")
            self.results.per_frame.append(check_molecule(s, self._source, charge=self._charge,
                                                         cov_factor=self._cov_factor))

        def _conclude(self):
            per = self.results.per_frame
            for c in MOLECULE_CHECKS + ("valid", "valid_and_same_graph"):
                self.results[c] = np.array([bool(getattr(r, c)) for r in per])
            self.results.summary = summarize_validity(per)

    return MoleculeValidityAnalysis


_LAZY: dict[str, Any] = {}


def __getattr__(name: str):
    # MoleculeValidityAnalysis subclasses MDAnalysis's AnalysisBase; it is built on first access so
    # that importing this module does not import MDAnalysis.
    if name == "MoleculeValidityAnalysis":
        if name not in _LAZY:
            _LAZY[name] = _make_analysis_class()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# Crystals
# --------------------------------------------------------------------------------------------

@dataclass
class CrystalMatch:
    name: str
    matched: bool
    rms: float | None  # pymatgen's RMS displacement, normalised by (V/n)^(1/3), when matched and asked for
    max_dist: float | None
    volume_ratio: float  # V(structure) per atom / V(reference) per atom
    reference: str
    mode: str  # how the two were compared (see match_crystal)


def _pmg(structure):
    if hasattr(structure, "symbols") and hasattr(structure, "to_pymatgen"):  # our Structure
        if not structure.periodic:
            raise ValueError(f"match_crystal: structure '{structure.name}' is not periodic")
        return structure.to_pymatgen(), structure.name
    return structure.copy(), getattr(structure, "formula", "")


def _structure_matcher(**kwargs):
    try:
        from pymatgen.core.structure_matcher import StructureMatcher
    except ImportError:  # pymatgen before the pymatgen-core split
        from pymatgen.analysis.structure_matcher import StructureMatcher
    return StructureMatcher(**kwargs)


def _integer_supercell(s1, s2, tol: float = 0.15) -> np.ndarray | None:
    """The integer matrix R with lattice(s1) ≈ R · lattice(s2) (rows = vectors), if there is one
    and the site counts agree with it; else None."""
    r = s1.lattice.matrix @ np.linalg.inv(s2.lattice.matrix)
    r_int = np.rint(r)
    det = round(abs(np.linalg.det(r_int)))
    if det < 1 or np.abs(r - r_int).max() > tol or len(s1) != det * len(s2):
        return None
    return r_int.astype(int)


def match_crystal(structure, reference, ltol: float = 0.2, stol: float = 0.3, angle_tol: float = 5.0,
                  scale: bool = True, primitive_cell: bool | None = None, with_rms: bool = True) -> CrystalMatch:
    """pymatgen ``StructureMatcher`` of a (relaxed, generated) crystal against its reference.

    Both may be :class:`~engine_plugins.data.molecules.Structure` (periodic) or pymatgen
    ``Structure``; tolerances are pymatgen's defaults. How they are compared (``mode``), with
    ``primitive_cell`` None (automatic):

    - same number of sites: directly, without primitive reduction;
    - the structure's cell is an integer supercell R of the reference cell (within 0.15 per
      entry of R, e.g. a strained or relaxed ``build_crystal(name, cutoff)``): against the same
      supercell of the reference, without primitive reduction;
    - otherwise: pymatgen's default, both reduced to primitive cells.

    Why not always pymatgen's default: primitive reduction of a *noisy* supercell fails beyond
    about 0.1 Å of noise (measured on these prototypes; the site counts then differ and nothing
    matches) and can take minutes on a 216-atom cell. Comparing like-sized cells avoids both.
    A 64–216-atom supercell takes about 1–15 s on one core.
    """
    s1, name = _pmg(structure)
    s2, ref_name = _pmg(reference)
    mode = "as given"
    if primitive_cell is None:
        if len(s1) == len(s2):
            primitive_cell, mode = False, "same cell size"
        else:
            r = _integer_supercell(s1, s2)
            if r is not None:
                s2 = s2.make_supercell(r, in_place=False)
                primitive_cell, mode = False, f"reference supercell {r.tolist()}"
            else:
                primitive_cell, mode = True, "primitive reduction"
    sm = _structure_matcher(ltol=ltol, stol=stol, angle_tol=angle_tol, primitive_cell=primitive_cell, scale=scale,
                            attempt_supercell=False)
    matched = bool(sm.fit(s1, s2))
    rms = max_dist = None
    if matched and with_rms:
        r = sm.get_rms_dist(s1, s2)
        if r is not None:
            rms, max_dist = float(r[0]), float(r[1])
    vr = (s1.volume / len(s1)) / (s2.volume / len(s2))
    return CrystalMatch(name, matched, rms, max_dist, float(vr), ref_name, mode)


def crystal_match_fraction(structures: Sequence, references: Sequence, **kwargs) -> tuple[float, list[CrystalMatch]]:
    """Fraction of ``structures[i]`` that match ``references[i]`` (and the per-structure matches)."""
    if len(structures) != len(references):
        raise ValueError(f"{len(structures)} structures but {len(references)} references")
    matches = [match_crystal(s, r, **kwargs) for s, r in zip(structures, references)]
    return (float(np.mean([m.matched for m in matches])) if matches else float("nan")), matches


# --------------------------------------------------------------------------------------------
# Screening
# --------------------------------------------------------------------------------------------

def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if either input is constant."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} vs {len(y)} values")
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def fraction_ranked_correctly(energies_low: Sequence[float], energies_high) -> float:
    """Fraction of pairs (i, k) with ``energies_low[i] < energies_high[i, k]`` (ties count ½).

    ``energies_low``: [M] (e.g. each equilibrium structure); ``energies_high``: [M] or [M, K]
    (its perturbed copies or decoys, same composition, so pseudo-energies are comparable).
    """
    lo = np.asarray(energies_low, float).reshape(-1)
    hi = np.asarray(energies_high, float)
    hi = hi.reshape(len(lo), -1)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise ValueError("fraction_ranked_correctly: non-finite energies")
    wins = (lo[:, None] < hi).astype(float) + 0.5 * (lo[:, None] == hi)
    return float(wins.mean())


@dataclass
class RankingResult:
    """Screening metrics of a pseudo-energy (see :func:`rank_correlation`)."""

    spearman_pooled: float  # ΔE = E − E_eq vs perturbation size, all structures pooled
    spearman_per_structure: float  # mean over structures of Spearman(E, size) incl. size 0
    fraction_correct: float  # pairs (equilibrium, perturbed) with E_eq < E_perturbed
    n_structures: int
    n_pairs: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rank_correlation(energies_equilibrium: Sequence[float], energies_perturbed,
                     perturbation_sizes) -> RankingResult:
    """How well a pseudo-energy ranks structures by their distance from equilibrium.

    ``energies_equilibrium``: [M] pseudo-energies of M equilibrium structures;
    ``energies_perturbed``: [M, K] of K perturbed copies of each; ``perturbation_sizes``: [K] or
    [M, K] (e.g. the noise σ or the RMSD to equilibrium, Å). Energies of different structures are
    never compared with each other (pseudo-energies are extensive and offset per molecule): the
    pooled Spearman uses ΔE = E − E_eq of each structure's own equilibrium.
    """
    e0 = np.asarray(energies_equilibrium, float).reshape(-1)
    m = len(e0)
    e = np.asarray(energies_perturbed, float).reshape(m, -1)
    k = e.shape[1]
    sizes = np.broadcast_to(np.asarray(perturbation_sizes, float), (m, k)) if np.ndim(perturbation_sizes) == 1 \
        else np.asarray(perturbation_sizes, float).reshape(m, k)
    if not (np.isfinite(e0).all() and np.isfinite(e).all() and np.isfinite(sizes).all()):
        raise ValueError("rank_correlation: non-finite energies or sizes")
    pooled = spearman(np.concatenate([np.zeros(m), sizes.ravel()]), np.concatenate([np.zeros(m), (e - e0[:, None]).ravel()]))
    per = [spearman(np.concatenate([[0.0], sizes[i]]), np.concatenate([[e0[i]], e[i]])) for i in range(m)]
    per = [r for r in per if np.isfinite(r)]
    return RankingResult(spearman_pooled=pooled, spearman_per_structure=float(np.mean(per)) if per else float("nan"),
                         fraction_correct=fraction_ranked_correctly(e0, e), n_structures=m, n_pairs=m * k)
