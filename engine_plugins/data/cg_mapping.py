"""Coarse-grained mappings: atoms -> beads; a bead sits at the mass-weighted centre of its atoms.

Built-in schemes (registered in the plugin registry as CG mappings, ``engine-plugins plugins``):

* ``residue``: one bead per residue (for water or a liquid of small molecules: one per molecule);
  bead name ``<resname><resid>``, bead type = residue name.
* ``molecule``: one bead per molecule = connected component of the bond graph (needs bonds);
  bead type = the molecule's residue names joined with ``-``.
* ``file``: a user JSON file. Either ``{"BEAD": [atom indices], ...}`` (bead type = bead name) or
  ``{"beads": {"BEAD": [...], ...}, "types": {"BEAD": "TYPE", ...}, "n_atoms": N}`` (types and
  n_atoms optional). Indices are 0-based positions in the topology; atoms may stay unmapped;
  an atom in two beads, an index out of range and an empty bead are errors.
* ``graph_partition``: a partition of the bond graph into beads of about ``atoms_per_bead`` heavy
  atoms (hydrogens follow their bonded heavy atom), by **recursive spectral bisection**: each
  connected component is cut, by the order of its Fiedler vector (the Laplacian eigenvector of the
  second-smallest eigenvalue; sign fixed so the lowest atom index is on the negative side, ties
  broken by atom index), into two parts with bead counts proportional to their sizes, recursively;
  parts left disconnected by a cut are split into their connected components. Deterministic (no
  random seeds; METIS not needed). Bead type = the bead's Hill formula (e.g. ``C2H5``), so beads
  of the same chemistry share a type; bead names ``<type>_<k>``.

Centres of mass under periodic boundaries: each bead's atoms are first made whole by the minimum
image relative to the bead's first atom (frame by frame), which assumes a bead spans less than half
the box. Applied to unwrapped atoms (``engine_plugins.data.trajectories``), the bead trajectory is
unwrapped as well.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np


class CGMappingError(ValueError):
    """A mapping is invalid or cannot be built for this topology."""


@dataclass
class CGMapping:
    """Atoms -> beads. ``bead_atoms[b]`` are 0-based atom indices of bead ``b``."""

    n_atoms: int
    bead_atoms: list[np.ndarray]
    bead_names: list[str]
    bead_types: list[str]
    scheme: str = "custom"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bead_atoms = [np.asarray(a, dtype=np.int64).reshape(-1) for a in self.bead_atoms]
        n_b = len(self.bead_atoms)
        if n_b == 0:
            raise CGMappingError("a CG mapping needs at least one bead")
        if len(self.bead_names) != n_b or len(self.bead_types) != n_b:
            raise CGMappingError(f"{n_b} beads but {len(self.bead_names)} names and {len(self.bead_types)} types")
        if len(set(self.bead_names)) != n_b:
            dup = sorted({n for n in self.bead_names if self.bead_names.count(n) > 1})
            raise CGMappingError(f"bead names must be unique; repeated: {dup[:5]}")
        seen = np.full(self.n_atoms, -1, dtype=np.int64)
        for b, idx in enumerate(self.bead_atoms):
            if idx.size == 0:
                raise CGMappingError(f"bead {self.bead_names[b]!r} has no atoms")
            bad = idx[(idx < 0) | (idx >= self.n_atoms)]
            if bad.size:
                raise CGMappingError(f"bead {self.bead_names[b]!r}: atom index(es) {bad[:5].tolist()} out of range "
                                     f"for {self.n_atoms} atoms (indices are 0-based)")
            if len(np.unique(idx)) != idx.size:
                raise CGMappingError(f"bead {self.bead_names[b]!r} lists an atom twice")
            clash = idx[seen[idx] >= 0]
            if clash.size:
                raise CGMappingError(f"atom {int(clash[0])} is in bead {self.bead_names[int(seen[clash[0]])]!r} and in "
                                     f"bead {self.bead_names[b]!r}; an atom belongs to one bead at most")
            seen[idx] = b
        self._atom_to_bead = seen
        order = np.concatenate(self.bead_atoms)
        self._order = order
        self._starts = np.concatenate([[0], np.cumsum([len(a) for a in self.bead_atoms])[:-1]])
        self._ref = np.repeat([int(a[0]) for a in self.bead_atoms], [len(a) for a in self.bead_atoms])

    # ---------------------------------------------------------------- properties
    @property
    def n_beads(self) -> int:
        return len(self.bead_atoms)

    @property
    def atom_to_bead(self) -> np.ndarray:
        """Bead index of every atom (-1: unmapped)."""
        return self._atom_to_bead.copy()

    @property
    def type_names(self) -> list[str]:
        """Distinct bead types in order of first appearance."""
        return list(dict.fromkeys(self.bead_types))

    @property
    def type_indices(self) -> np.ndarray:
        names = {t: i for i, t in enumerate(self.type_names)}
        return np.array([names[t] for t in self.bead_types], dtype=np.int64)

    # ---------------------------------------------------------------- mapping
    def bead_masses(self, masses: np.ndarray) -> np.ndarray:
        m = self._check_masses(masses)
        return np.add.reduceat(m[self._order], self._starts)

    def _check_masses(self, masses: np.ndarray) -> np.ndarray:
        m = np.asarray(masses, dtype=np.float64)
        if m.shape != (self.n_atoms,):
            raise CGMappingError(f"masses have shape {m.shape}; the mapping is for {self.n_atoms} atoms")
        if np.any(m[self._order] <= 0):
            raise CGMappingError("every mapped atom needs a positive mass")
        return m

    def apply(self, positions: np.ndarray, masses: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
        """Bead positions: mass-weighted centres of the beads' atoms.

        ``positions`` [N, 3] or [F, N, 3]; ``boxes`` None (no periodicity), [3, 3] or [F, 3, 3]
        (rows = cell vectors): atoms are taken at their minimum image from the bead's first atom.
        """
        x = np.asarray(positions, dtype=np.float64)
        single = x.ndim == 2
        if single:
            x = x[None]
        if x.ndim != 3 or x.shape[1:] != (self.n_atoms, 3):
            raise CGMappingError(f"positions have shape {np.shape(positions)}; the mapping is for {self.n_atoms} atoms")
        m = self._check_masses(masses)
        xo = x[:, self._order]
        ref = x[:, self._ref]
        d = xo - ref
        if boxes is not None:
            b = np.asarray(boxes, dtype=np.float64)
            if b.ndim == 2:
                b = np.broadcast_to(b, (x.shape[0], 3, 3))
            inv = np.linalg.inv(b)
            frac = np.einsum("fni,fij->fnj", d, inv)
            d = d - np.einsum("fni,fij->fnj", np.round(frac), b)
        w = m[self._order]
        mtot = np.add.reduceat(w, self._starts)
        com = np.add.reduceat(d * w[None, :, None], self._starts, axis=1) / mtot[None, :, None]
        out = x[:, [int(a[0]) for a in self.bead_atoms]] + com
        return out[0] if single else out

    # ---------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "n_atoms": self.n_atoms,
                "beads": {n: a.tolist() for n, a in zip(self.bead_names, self.bead_atoms)},
                "types": dict(zip(self.bead_names, self.bead_types))}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path


# ========================================================================================= schemes
def residue_mapping(universe) -> CGMapping:
    """One bead per residue (molecule for water / small-molecule liquids); type = residue name."""
    atoms = universe.atoms
    beads, names, types = [], [], []
    for res in universe.residues:
        idx = res.atoms.ix
        if len(idx) == 0:
            continue
        beads.append(idx)
        names.append(f"{res.resname}{res.resid}" if f"{res.resname}{res.resid}" not in names
                     else f"{res.resname}{res.resid}_{res.ix}")
        types.append(str(res.resname))
    return CGMapping(len(atoms), beads, names, types, scheme="residue")


def _bond_edges(universe, guess_bonds: bool = False) -> np.ndarray:
    if not hasattr(universe, "bonds") or len(universe.bonds) == 0:
        if guess_bonds:
            universe.atoms.guess_bonds()
        else:
            raise CGMappingError("the topology has no bonds. Fix: use a topology with bonds (PSF, TPR, PDB with "
                                 "CONECT records, LAMMPS data with Bonds) or pass guess_bonds=True")
    return np.asarray(universe.bonds.to_indices(), dtype=np.int64).reshape(-1, 2)


def molecule_mapping(universe, guess_bonds: bool = False) -> CGMapping:
    """One bead per molecule (connected component of the bond graph)."""
    edges = _bond_edges(universe, guess_bonds)
    n = len(universe.atoms)
    comps = _split_components(np.arange(n), edges)
    resnames = universe.atoms.resnames
    types = ["-".join(dict.fromkeys(str(r) for r in resnames[c])) for c in comps]
    counts: dict[str, int] = {}
    names = []
    for t in types:
        counts[t] = counts.get(t, 0) + 1
        names.append(f"{t}_{counts[t]}")
    return CGMapping(n, comps, names, types, scheme="molecule")


def load_mapping_file(path: str | os.PathLike, n_atoms: int | None = None) -> CGMapping:
    """A user mapping file (see the module doc); ``n_atoms`` of the topology it is used with."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CG mapping file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CGMappingError(f"CG mapping file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise CGMappingError(f"CG mapping file {path} must hold a JSON object of bead name -> atom indices")
    beads = data["beads"] if "beads" in data else data
    types = data.get("types", {}) if "beads" in data else {}
    if not isinstance(beads, dict):
        raise CGMappingError(f"CG mapping file {path}: 'beads' must be an object of bead name -> atom indices")
    for name, idx in beads.items():
        if not isinstance(idx, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
            raise CGMappingError(f"CG mapping file {path}: bead {name!r} must list integer atom indices")
    file_n = data.get("n_atoms") if "beads" in data else None
    if n_atoms is not None and file_n is not None and int(file_n) != n_atoms:
        raise CGMappingError(f"CG mapping file {path} is for {file_n} atoms; the topology has {n_atoms}")
    n = n_atoms if n_atoms is not None else (int(file_n) if file_n is not None
                                             else 1 + max(max(v) for v in beads.values() if v))
    try:
        return CGMapping(n, list(beads.values()), list(beads), [str(types.get(b, b)) for b in beads],
                         scheme="file", meta={"file": str(path)})
    except CGMappingError as exc:
        raise CGMappingError(f"CG mapping file {path}: {exc}") from None


def file_mapping(universe, path: str | os.PathLike) -> CGMapping:
    return load_mapping_file(path, len(universe.atoms))


def hill_formula(elements: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for e in elements:
        counts[e] = counts.get(e, 0) + 1
    keys = (["C"] if "C" in counts else []) + (["H"] if "H" in counts and "C" in counts else [])
    keys += sorted(k for k in counts if k not in keys)
    return "".join(f"{k}{counts[k] if counts[k] > 1 else ''}" for k in keys)


def _fiedler_order(nodes: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``nodes`` sorted by their Fiedler-vector value (ties and sign fixed deterministically)."""
    n = len(nodes)
    local = np.searchsorted(nodes, np.asarray(edges, dtype=np.int64).reshape(-1, 2))
    if n <= 48:
        lap = np.zeros((n, n))
        np.add.at(lap, (local[:, 0], local[:, 1]), -1.0)
        np.add.at(lap, (local[:, 1], local[:, 0]), -1.0)
        lap[np.diag_indices(n)] = -lap.sum(1)
        vec = np.linalg.eigh(lap)[1][:, 1]
    else:
        # sparse shift-invert Lanczos for the two smallest eigenpairs (fixed start vector:
        # deterministic; no dense O(n^3) work and no BLAS-thread contention)
        from scipy.sparse import coo_matrix
        from scipy.sparse.linalg import eigsh

        rows = np.concatenate([local[:, 0], local[:, 1]])
        cols = np.concatenate([local[:, 1], local[:, 0]])
        adj = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()
        adj.data[:] = 1.0
        deg = np.asarray(adj.sum(1)).ravel()
        lap = (coo_matrix((deg, (np.arange(n), np.arange(n))), shape=(n, n)) - adj).tocsc()
        vals, vecs = eigsh(lap, k=2, sigma=-1e-3, which="LM", v0=np.ones(n) + np.arange(n) / n, tol=1e-12)
        vec = vecs[:, int(np.argsort(vals)[1])]
    vec = np.round(vec, 10)
    if vec[0] > 0:  # nodes are sorted, so vec[0] belongs to the lowest atom index
        vec = -vec
    return nodes[np.lexsort((nodes, vec))]


def _split_components(sub: np.ndarray, edges: np.ndarray) -> list[np.ndarray]:
    """Connected components of the subgraph on ``sub`` (sorted arrays, ordered by smallest node)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    sub = np.sort(sub)
    local = np.searchsorted(sub, edges)
    n = len(sub)
    adj = coo_matrix((np.ones(len(local)), (local[:, 0], local[:, 1])), shape=(n, n)) if len(local) else \
        coo_matrix((n, n))
    _, labels = connected_components(adj, directed=False)
    comps = [sub[labels == k] for k in np.unique(labels)]
    return sorted(comps, key=lambda c: int(c[0]))


def partition_graph(n_nodes: int, edges: np.ndarray, target_size: int,
                    nodes: np.ndarray | None = None) -> list[np.ndarray]:
    """Partition a graph into connected parts of about ``target_size`` nodes by recursive spectral
    bisection (see the module doc). Returns sorted node arrays ordered by their smallest node.

    Each cut keeps both halves connected: the largest component of the first half stays, the
    rest of the subgraph is the second half; then the largest component of that stays and the rest
    joins the first half (whatever is moved only touches the half it joins).
    """
    if target_size < 1:
        raise CGMappingError(f"target bead size must be >= 1, got {target_size}")
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    nodes = np.arange(n_nodes) if nodes is None else np.asarray(sorted(nodes), dtype=np.int64)
    n_total = int(max(n_nodes, (nodes.max() + 1) if nodes.size else 0, (edges.max() + 1) if edges.size else 0))
    parts: list[np.ndarray] = []

    def sub_edges(sub: np.ndarray) -> np.ndarray:
        inside = np.zeros(n_total, dtype=bool)
        inside[sub] = True
        return edges[inside[edges[:, 0]] & inside[edges[:, 1]]]

    def largest(sub: np.ndarray) -> np.ndarray:
        comps = _split_components(sub, sub_edges(sub))
        return max(comps, key=lambda c: (len(c), -int(c[0])))

    def split(sub: np.ndarray, k: int) -> None:
        if k <= 1 or len(sub) <= 1:
            parts.append(np.sort(sub))
            return
        order = _fiedler_order(np.sort(sub), sub_edges(sub))
        k1 = k // 2
        cut = min(max(int(round(len(sub) * k1 / k)), 1), len(sub) - 1)
        a = largest(order[:cut])
        b = largest(np.setdiff1d(sub, a))
        a = np.setdiff1d(sub, b)
        ka = max(1, int(round(k * len(a) / len(sub))))
        split(a, min(ka, k - 1))
        split(b, max(k - ka, 1))

    for comp in _split_components(nodes, sub_edges(nodes)):
        split(comp, max(1, int(round(len(comp) / target_size))))
    return sorted(parts, key=lambda p: int(p[0]))


def _elements(universe) -> list[str]:
    if hasattr(universe.atoms, "elements") and all(universe.atoms.elements):
        return [str(e).capitalize() for e in universe.atoms.elements]
    return [re.sub(r"[^A-Za-z].*$", "", str(t))[:1].upper() or "X" for t in universe.atoms.types]


def graph_partition_mapping(universe, atoms_per_bead: int = 4, heavy_only: bool = True,
                            guess_bonds: bool = False) -> CGMapping:
    """Beads of about ``atoms_per_bead`` (heavy) atoms from the bond graph (see the module doc)."""
    edges = _bond_edges(universe, guess_bonds)
    n = len(universe.atoms)
    elements = _elements(universe)
    is_h = np.array([e == "H" for e in elements]) if heavy_only else np.zeros(n, bool)
    heavy = np.flatnonzero(~is_h)
    if heavy.size == 0:
        raise CGMappingError("no heavy atoms to partition (heavy_only=True)")
    hh = edges[~is_h[edges[:, 0]] & ~is_h[edges[:, 1]]]
    parts = partition_graph(n, hh, atoms_per_bead, nodes=heavy)
    bead_of = np.full(n, -1, dtype=np.int64)
    for b, p in enumerate(parts):
        bead_of[p] = b
    members = [list(p) for p in parts]
    for h in np.flatnonzero(is_h):
        partners = np.concatenate([edges[edges[:, 0] == h, 1], edges[edges[:, 1] == h, 0]])
        partners = partners[~is_h[partners]]
        if partners.size == 0:
            raise CGMappingError(f"hydrogen atom {h} is bonded to no heavy atom; cannot place it in a bead")
        members[bead_of[int(partners.min())]].append(int(h))
    beads = [np.array(sorted(m), dtype=np.int64) for m in members]
    types = [hill_formula([elements[i] for i in b]) for b in beads]
    counts: dict[str, int] = {}
    names = []
    for t in types:
        counts[t] = counts.get(t, 0) + 1
        names.append(f"{t}_{counts[t]}")
    return CGMapping(n, beads, names, types, scheme="graph_partition",
                     meta={"atoms_per_bead": atoms_per_bead, "heavy_only": heavy_only,
                           "algorithm": "recursive spectral bisection of the bond graph"})


#: the built-in schemes: name -> (builder(universe, **options), description)
BUILTIN_MAPPINGS: dict[str, tuple[Callable[..., CGMapping], str]] = {
    "residue": (residue_mapping, "one bead per residue (per molecule for liquids); type = residue name"),
    "molecule": (molecule_mapping, "one bead per molecule (bond-graph component); needs bonds"),
    "file": (file_mapping, "user JSON file: bead name -> 0-based atom indices (option path=...)"),
    "graph_partition": (graph_partition_mapping, "recursive spectral bisection of the bond graph into beads of "
                                                 "~atoms_per_bead heavy atoms; type = Hill formula"),
}


def resolve_mapping(mapping: Any, universe, **options: Any) -> CGMapping:
    """A :class:`CGMapping` for ``universe`` from a CGMapping, a registered scheme name, a path to
    a mapping JSON file, or a callable ``universe -> CGMapping``."""
    n = len(universe.atoms)
    if isinstance(mapping, CGMapping):
        cg = mapping
    elif callable(mapping):
        cg = mapping(universe, **options)
    elif isinstance(mapping, (str, os.PathLike)):
        text = str(mapping)
        if text.endswith(".json") or os.sep in text:
            cg = load_mapping_file(text, n)
        else:
            from engine_plugins.plugins import get_plugin_manager

            cg = get_plugin_manager().get("cg_mappings", text).build(universe, **options)
    else:
        raise CGMappingError(f"cannot make a CG mapping from {type(mapping).__name__}")
    if not isinstance(cg, CGMapping):
        raise CGMappingError(f"CG mapping builder returned {type(cg).__name__}, not CGMapping")
    if cg.n_atoms != n:
        raise CGMappingError(f"CG mapping is for {cg.n_atoms} atoms; the topology has {n}")
    return cg
