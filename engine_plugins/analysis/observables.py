"""Dynamical and structural observables of trajectories (MDAnalysis ``AnalysisBase`` classes).

Used to compare learned rollouts with reference MD (``engine_plugins.analysis.evaluate``), but
each class runs on any ``MDAnalysis.Universe`` holding **unwrapped** coordinates: build one from
an :class:`~engine_plugins.data.trajectories.UnwrappedTrajectory` (atoms or CG beads) with
:func:`trajectory_universe`, or unwrap a file with MDAnalysis's ``NoJump`` transformation.

* :class:`SpeciesMSD`: mean squared displacement of each species (atom type) at every lag the
  frames allow, averaged over all time origins and the species' atoms (FFT algorithm, equal to
  ``MDAnalysis.analysis.msd.EinsteinMSD(msd_type="xyz")`` on the same atoms); optionally about the
  system's mass-weighted centre of mass per frame (``remove_com``). :func:`diffusivity` fits a line
  to the MSD's long-time part: D = slope / 6 over lag times in ``fit_range`` x t_max
  (default 0.2 .. 0.8: the short-time ballistic/caging part and the last lags, which have few
  time origins, are left out).
* :class:`SpeciesRDF`: radial distribution function of every pair of species in one pass per
  frame (minimum image, pairs i < j), normalised like ``MDAnalysis.analysis.rdf.InterRDF`` with
  ``exclusion_block=(1, 1)`` for a species with itself (identical numbers; tested).
* :class:`RadiusOfGyration`: mass-weighted radius of gyration of every chain (fragment of the
  bond graph with at least ``min_size`` atoms/beads) per frame; only meaningful for systems that
  have chains (CG polymers); water or a crystal has none.
* :class:`ClosestApproach`: the shortest distance of every pair of species in each frame (minimum
  image). Why beside the RDF: a few atoms pushed into each other barely change an RDF normalised
  over 0 .. r_max, but they are unphysical and they are what makes a long learned rollout fail.
* :func:`rdf_jsd`: Jensen-Shannon divergence of two RDFs on the same bins. Normalisation: each
  RDF is turned into a probability over its bins up to ``r_max``: p_k = g(r_k) r_k^2 / sum_j
  g(r_j) r_j^2 (the distribution of pair distances, since the shell volume grows as r^2 dr with
  equal bins); JSD = (KL(p||m) + KL(q||m)) / 2 with m = (p + q) / 2, natural logarithm, so
  0 <= JSD <= ln 2 = 0.693.
* :func:`spearman`, :func:`median_relative_error`: cross-case figures of merit.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from MDAnalysis.analysis.base import AnalysisBase


class ObservableError(ValueError):
    """An observable cannot be computed as asked (the message names the problem and the fix)."""


# ------------------------------------------------------------------------------ universes
def trajectory_universe(traj: Any, *, bonds: Sequence[tuple[int, int]] | None = None, dt: float | None = None):
    """An in-memory ``MDAnalysis.Universe`` of an ``UnwrappedTrajectory`` (positions in Å, types =
    species or bead types, masses, boxes, frame spacing ``dt`` ps from its times); ``bonds``
    (pairs of atom/bead indices) define chains for :class:`RadiusOfGyration`."""
    import MDAnalysis as mda
    from MDAnalysis.coordinates.memory import MemoryReader
    from MDAnalysis.lib.mdamath import triclinic_box

    pos = np.asarray(traj.positions)
    if pos.ndim != 3 or pos.shape[2] != 3:
        raise ObservableError(f"positions must be [frames, atoms, 3], got {pos.shape}")
    n = pos.shape[1]
    u = mda.Universe.empty(n, trajectory=False)
    u.add_TopologyAttr("types", [str(s) for s in traj.species])
    u.add_TopologyAttr("names", [str(s) for s in traj.species])
    u.add_TopologyAttr("masses", np.asarray(traj.masses, dtype=np.float64))
    if bonds is not None and len(bonds):
        u.add_TopologyAttr("bonds", [tuple(map(int, b)) for b in bonds])
    if dt is None:
        times = np.asarray(traj.times, dtype=np.float64)
        dt = float(times[1] - times[0]) if len(times) > 1 else 1.0
    dims = None
    if traj.boxes is not None:
        dims = np.array([triclinic_box(*b) for b in np.asarray(traj.boxes)], dtype=np.float32)
    u.load_new(pos.astype(np.float32), format=MemoryReader, dimensions=dims, dt=dt)
    return u


def _species_of(atoms) -> list[str]:
    return [str(t) for t in atoms.types]


# ------------------------------------------------------------------------------ MSD
def msd_fft(positions: np.ndarray) -> np.ndarray:
    """MSD(m) for every lag m = 0..F-1 of [F, N, 3] unwrapped positions, averaged over all time
    origins and atoms (the FFT algorithm of Calandrini et al.; O(N F log F))."""
    r = np.asarray(positions, dtype=np.float64)
    r = r - r[0]  # translation per atom does not change the MSD; keeps the sums small
    n_frames = r.shape[0]
    if n_frames < 2:
        raise ObservableError("an MSD needs at least two frames")
    d = (r ** 2).sum(-1)  # [F, N]
    d = np.concatenate([d, np.zeros((1, d.shape[1]))])
    q = 2.0 * d.sum(0)
    s1 = np.zeros((n_frames, r.shape[1]))
    for m in range(n_frames):
        q = q - d[m - 1] - d[n_frames - m]
        s1[m] = q / (n_frames - m)
    size = 2 * n_frames
    f = np.fft.rfft(r, n=size, axis=0)
    acf = np.fft.irfft(f * f.conj(), n=size, axis=0)[:n_frames].sum(-1)  # [F, N]
    s2 = acf / (n_frames - np.arange(n_frames))[:, None]
    return (s1 - 2.0 * s2).mean(axis=1)


class SpeciesMSD(AnalysisBase):
    """MSD of each species (``atoms.types``) of an unwrapped trajectory at every frame lag.

    Results: ``lagtimes`` [L] (ps, from the trajectory's dt x step), ``msd`` {species: [L]} (Å^2),
    ``n_atoms`` {species: count}, ``com_drift`` [F] (|centre of mass - its first value|, Å).
    """

    def __init__(self, atomgroup, species: Sequence[str] | None = None, remove_com: bool = False, **kwargs: Any):
        super().__init__(atomgroup.universe.trajectory, **kwargs)
        self.atoms = atomgroup
        all_species = list(dict.fromkeys(_species_of(atomgroup)))
        self.species = list(species) if species is not None else all_species
        unknown = [s for s in self.species if s not in all_species]
        if unknown:
            raise ObservableError(f"species {unknown} not in the atom group (types present: {all_species})")
        self.remove_com = remove_com

    def _prepare(self) -> None:
        self._frames: list[np.ndarray] = []
        self._com: list[np.ndarray] = []
        m = np.asarray(self.atoms.masses, dtype=np.float64)
        self._w = m / m.sum() if m.sum() > 0 else np.full(len(m), 1.0 / len(m))

    def _single_frame(self) -> None:
        x = self.atoms.positions.astype(np.float64)
        self._frames.append(x)
        self._com.append(self._w @ x)

    def _conclude(self) -> None:
        pos = np.stack(self._frames)
        com = np.stack(self._com)
        if self.remove_com:
            pos = pos - com[:, None, :]
        types = np.array(_species_of(self.atoms))
        self.results.msd = {s: msd_fft(pos[:, types == s]) for s in self.species}
        self.results.n_atoms = {s: int((types == s).sum()) for s in self.species}
        self.results.lagtimes = np.asarray(self.times, dtype=np.float64) - float(self.times[0])
        self.results.com_drift = np.linalg.norm(com - com[0], axis=1)


def diffusivity(lagtimes: np.ndarray, msd: np.ndarray, fit_range: tuple[float, float] = (0.2, 0.8)) -> float:
    """D = slope / 6 of a least-squares line through MSD(t) for ``fit_range[0] <= t / t_max <=
    fit_range[1]`` (units of MSD per time: Å^2/ps here; 1 Å^2/ps = 1e-4 cm^2/s)."""
    t, y = np.asarray(lagtimes, float), np.asarray(msd, float)
    if not 0.0 <= fit_range[0] < fit_range[1] <= 1.0:
        raise ObservableError(f"fit_range must satisfy 0 <= lo < hi <= 1, got {fit_range}")
    sel = (t >= fit_range[0] * t.max()) & (t <= fit_range[1] * t.max()) & np.isfinite(y)
    if sel.sum() < 2:
        raise ObservableError(f"fewer than two MSD points in the fit range {fit_range} of t_max = {t.max()}; "
                              "use a longer trajectory or a wider range")
    return float(np.polyfit(t[sel], y[sel], 1)[0] / 6.0)


# ------------------------------------------------------------------------------ RDF
def pair_name(a: str, b: str) -> str:
    return f"{a}-{b}"


class SpeciesRDF(AnalysisBase):
    """g(r) of every unordered pair of species, minimum image, ``nbins`` equal bins on [0, r_max].

    Results: ``edges`` [nbins+1], ``bins`` (centres), ``rdf`` {"A-B": [nbins]}, ``count``
    {"A-B": pair counts per bin, summed over frames}, ``volume`` (mean cell volume, Å^3).
    ``r_max`` must not exceed half the shortest perpendicular cell width (minimum image).
    """

    def __init__(self, atomgroup, r_max: float = 6.0, nbins: int = 60, pairs: Sequence[tuple[str, str]] | None = None,
                 **kwargs: Any):
        super().__init__(atomgroup.universe.trajectory, **kwargs)
        self.atoms = atomgroup
        self.r_max = float(r_max)
        self.nbins = int(nbins)
        if self.r_max <= 0 or self.nbins < 1:
            raise ObservableError(f"r_max must be > 0 and nbins >= 1 (got {r_max}, {nbins})")
        species = list(dict.fromkeys(_species_of(atomgroup)))
        if pairs is None:
            pairs = [(a, b) for i, a in enumerate(species) for b in species[i:]]
        for a, b in pairs:
            if a not in species or b not in species:
                raise ObservableError(f"pair {a}-{b}: species present are {species}")
        self.pairs = [tuple(p) for p in pairs]

    def _prepare(self) -> None:
        self._types = np.array(_species_of(self.atoms))
        self._index = {s: i for i, s in enumerate(dict.fromkeys(self._types))}
        self._tidx = np.array([self._index[t] for t in self._types])
        self.results.edges = np.linspace(0.0, self.r_max, self.nbins + 1)
        self.results.count = {pair_name(*p): np.zeros(self.nbins) for p in self.pairs}
        self._volume = 0.0

    def _single_frame(self) -> None:
        from MDAnalysis.lib.distances import self_capped_distance
        from MDAnalysis.lib.mdamath import triclinic_vectors

        dims = self._ts.dimensions
        if dims is None:
            raise ObservableError("an RDF needs a periodic cell in every frame; this trajectory has none")
        box = triclinic_vectors(dims)
        vol = abs(np.linalg.det(box))
        widths = vol / np.array([np.linalg.norm(np.cross(box[1], box[2])), np.linalg.norm(np.cross(box[2], box[0])),
                                 np.linalg.norm(np.cross(box[0], box[1]))])
        if self.r_max > 0.5 * widths.min() + 1e-9:
            raise ObservableError(f"r_max = {self.r_max} Å exceeds half the shortest cell width "
                                  f"({0.5 * widths.min():.3f} Å). Fix: pass a smaller r_max")
        self._volume += vol
        pairs, dist = self_capped_distance(self.atoms.positions, self.r_max, box=dims)
        if len(pairs) == 0:
            return
        ti, tj = self._tidx[pairs[:, 0]], self._tidx[pairs[:, 1]]
        for a, b in self.pairs:
            ia, ib = self._index[a], self._index[b]
            sel = ((ti == ia) & (tj == ib)) | ((ti == ib) & (tj == ia))
            h, _ = np.histogram(dist[sel], bins=self.results.edges)
            self.results.count[pair_name(a, b)] += h

    def _conclude(self) -> None:
        edges = self.results.edges
        shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
        n_frames = max(self.n_frames, 1)
        volume = self._volume / n_frames
        counts = {s: int((self._types == s).sum()) for s in self._index}
        self.results.bins = 0.5 * (edges[1:] + edges[:-1])
        self.results.volume = volume
        self.results.rdf = {}
        for a, b in self.pairs:
            n_pairs = counts[a] * (counts[a] - 1) / 2.0 if a == b else float(counts[a] * counts[b])
            density = n_pairs / volume
            name = pair_name(a, b)
            with np.errstate(invalid="ignore", divide="ignore"):
                g = self.results.count[name] / (density * shell * n_frames) if n_pairs > 0 else np.zeros(self.nbins)
            self.results.rdf[name] = np.nan_to_num(g)


class ClosestApproach(AnalysisBase):
    """Shortest distance of each unordered pair of species in every frame (minimum image when the
    frame has a cell). Results: ``min_distance`` {"A-B": [n_frames]} in Å; ``inf`` where no pair is
    closer than ``cutoff`` in that frame."""

    def __init__(self, atomgroup, cutoff: float = 4.0, **kwargs: Any):
        super().__init__(atomgroup.universe.trajectory, **kwargs)
        self.atoms = atomgroup
        self.cutoff = float(cutoff)
        if not self.cutoff > 0:
            raise ObservableError(f"cutoff must be > 0, got {cutoff}")

    def _prepare(self) -> None:
        types = np.array(_species_of(self.atoms))
        species = list(dict.fromkeys(types))
        self._tidx = np.array([species.index(t) for t in types])
        self._pairs = [(i, j) for i in range(len(species)) for j in range(i, len(species))]
        self._names = [pair_name(species[i], species[j]) for i, j in self._pairs]
        self.results.min_distance = {n: np.full(self.n_frames, np.inf) for n in self._names}

    def _single_frame(self) -> None:
        from MDAnalysis.lib.distances import self_capped_distance

        pairs, dist = self_capped_distance(self.atoms.positions, self.cutoff, box=self._ts.dimensions)
        if len(pairs) == 0:
            return
        ti, tj = self._tidx[pairs[:, 0]], self._tidx[pairs[:, 1]]
        for (a, b), name in zip(self._pairs, self._names):
            sel = ((ti == a) & (tj == b)) | ((ti == b) & (tj == a))
            if sel.any():
                self.results.min_distance[name][self._frame_index] = float(dist[sel].min())


def rdf_probability(r: np.ndarray, g: np.ndarray) -> np.ndarray:
    """p_k = g(r_k) r_k^2 / sum_j g(r_j) r_j^2 over the given bins (see the module doc)."""
    w = np.clip(np.asarray(g, float), 0.0, None) * np.asarray(r, float) ** 2
    total = w.sum()
    if not np.isfinite(total) or total <= 0:
        raise ObservableError("the RDF has no pairs within r_max (all zero); use a larger r_max or more frames")
    return w / total


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """JSD of two probability vectors, natural log (0 .. ln 2)."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        sel = a > 0
        return float((a[sel] * np.log(a[sel] / m[sel])).sum())

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def rdf_jsd(r: np.ndarray, g_ref: np.ndarray, g_other: np.ndarray) -> float:
    """Jensen-Shannon divergence of two RDFs on the same bins (normalisation in the module doc)."""
    if np.shape(g_ref) != np.shape(g_other) or np.shape(g_ref) != np.shape(r):
        raise ObservableError(f"RDFs must share their bins: shapes {np.shape(g_ref)}, {np.shape(g_other)}, r "
                              f"{np.shape(r)}")
    return jensen_shannon(rdf_probability(r, g_ref), rdf_probability(r, g_other))


# ------------------------------------------------------------------------------ Rg
class RadiusOfGyration(AnalysisBase):
    """Mass-weighted radius of gyration of each chain per frame (positions must be unwrapped, so
    that chains are whole). Chains: ``chains`` (lists of atom indices) or the fragments of the
    bond graph with at least ``min_size`` members. Results: ``timeseries`` [F, C] (Å), ``mean``,
    ``std`` (over frames and chains), ``chains`` (index arrays)."""

    def __init__(self, atomgroup, chains: Sequence[Sequence[int]] | None = None, min_size: int = 2, **kwargs: Any):
        super().__init__(atomgroup.universe.trajectory, **kwargs)
        self.atoms = atomgroup
        if chains is None:
            if not hasattr(atomgroup, "fragments"):
                raise ObservableError("no bonds, so no chains: pass chains=[[indices], ...] or a universe with bonds")
            chains = [f.ix for f in atomgroup.fragments if len(f) >= min_size]
        self.chains = [np.asarray(c, dtype=np.int64) for c in chains if len(c) >= min_size]
        if not self.chains:
            raise ObservableError(f"no chain with at least {min_size} members: the system has no chains")

    def _prepare(self) -> None:
        self._rg: list[np.ndarray] = []
        self._m = np.asarray(self.atoms.universe.atoms.masses, dtype=np.float64)

    def _single_frame(self) -> None:
        x = self.atoms.universe.atoms.positions.astype(np.float64)
        out = np.empty(len(self.chains))
        for k, c in enumerate(self.chains):
            m = self._m[c]
            com = (m[:, None] * x[c]).sum(0) / m.sum()
            out[k] = math.sqrt(float((m * ((x[c] - com) ** 2).sum(-1)).sum() / m.sum()))
        self._rg.append(out)

    def _conclude(self) -> None:
        ts = np.stack(self._rg)
        self.results.timeseries = ts
        self.results.mean = float(ts.mean())
        self.results.std = float(ts.std())
        self.results.chains = self.chains


def chains_from_bonds(n: int, bonds: Sequence[tuple[int, int]], min_size: int = 2) -> list[np.ndarray]:
    """Connected components (of at least ``min_size`` nodes) of a bond graph on ``n`` nodes."""
    parent = np.arange(n)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in bonds:
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(i) for i in range(n)])
    return [np.flatnonzero(roots == r) for r in np.unique(roots) if (roots == r).sum() >= min_size]


# ------------------------------------------------------------------------------ cross-case figures
def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (ties: average ranks); NaN with fewer than 3 finite pairs."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    return float(spearmanr(x[ok], y[ok]).statistic)


def median_relative_error(pred: Sequence[float], ref: Sequence[float]) -> float:
    """median_k |pred_k - ref_k| / |ref_k| (NaN if no finite pair with ref != 0)."""
    p, r = np.asarray(pred, float), np.asarray(ref, float)
    ok = np.isfinite(p) & np.isfinite(r) & (r != 0)
    if not ok.any():
        return float("nan")
    return float(np.median(np.abs(p[ok] - r[ok]) / np.abs(r[ok])))


def mean_abs_log10_ratio(pred: Sequence[float], ref: Sequence[float]) -> float:
    """mean_k |log10(pred_k / ref_k)| over finite pairs with both > 0 (NaN if none).

    Unlike the relative error, which caps an under-prediction at 100 %, it weighs 2x too fast and
    2x too slow alike, and as a mean over all cases it moves less with one rollout than a median."""
    p, r = np.asarray(pred, float), np.asarray(ref, float)
    ok = np.isfinite(p) & np.isfinite(r) & (p > 0) & (r > 0)
    if not ok.any():
        return float("nan")
    return float(np.mean(np.abs(np.log10(p[ok] / r[ok]))))
