"""Response matching (RM, seed 002) for periodic crystals: noise, pseudo-energy and response targets.

Imports only torch and numpy. One place for the definitions the model, trainer, relaxations and
tests share.

Pseudo-energy of a noisy crystal (positions ``x`` [N, 3], cell ``h`` [3, 3], rows = cell vectors)
around its reference (fractional coordinates ``s0``, cell ``h0``)::

    E(x, h) = (k/2) sum_i |u_i|^2  +  (k_eps/2) |eps|_F^2  +  E_rep(x, h)

* ``u_i = (s_i - s0_i - mean_j(s_j - s0_j)) h0``: the displacement of atom i from its reference
  site, measured in fractional coordinates ``s = x h^-1`` (nearest image by rounding) and expressed
  in the *reference* cell's metric; the mean over atoms is removed (translation-free: the target
  forces sum to zero, as a translation-invariant model needs; no rotation is removed because a
  symmetric strain has none and the cell fixes the orientation). Measured this way the site term
  does not change under a homogeneous strain of the whole structure, so displacements and cell
  strain are decoupled: the pseudo-forces point back to the reference sites and the pseudo-stress
  points back to the reference cell, each on its own.
* ``eps = sym(h0^-1 h - I)`` (row convention ``h = h0 (I + eps)``): the cell strain from the
  reference cell. ``k_eps = strain_stiffness * k * N * l^2`` with ``l = (V0/N)^(1/3)``, i.e. a
  strain ``eps`` costs what displacing every atom by ``l |eps|`` would: extensive, and learnable
  by a local model (it sees the density).
* ``E_rep``: a short-range pair repulsion, ``sum_{i<j} (k_rep/2) (r_rep,ij - r_ij)^2`` for
  ``r_ij < r_rep,ij``, with ``r_rep,ij = repulsion_radius_factor * (r_cov,i + r_cov,j)`` (ASE
  covalent radii; factor 0.6 keeps every reference crystal's nearest-neighbour distance outside
  it, so the reference stays an exact minimum with E = 0) and ``k_rep = 10 eV/A^2``. It keeps
  atoms from passing through each other when large noise puts them on top of one another; the
  exported model carries the same term analytically (:mod:`.model`), so the network learns the rest.

Response (the training targets), with ``k = 1 eV/A^2``:

* pseudo-forces ``F_i = -dE/dx_i = -k u_i h0^T h^-T + F_rep,i`` (eV/A; for an unstrained cell the
  quadratic part is the displacement back to the reference site, in A);
* strain derivative ``D = dE/d(eta)`` [3, 3] for a homogeneous strain ``x -> x (I + eta)``,
  ``h -> h (I + eta)`` applied to the current structure:
  ``D = k_eps (I + A)^T eps + sum_pairs phi'(r) r (x) r / r`` with ``A = h0^-1 h - I``; the
  pseudo-stress is ``sigma = D / V`` (eV/A^3, ASE's sign: positive when the cell wants to shrink).
  LAMMPS's virial is ``W = sum r (x) f = -D``, so its pressure tensor is ``-sigma`` (times the unit
  factor). For a stretched cell ``sigma > 0`` and a cell relaxation shrinks it.

Noise (per structure): displacement scale ``sigma`` from a log-uniform ladder over
``[sigma_min, sigma_max] = [0.1, 3.2] A`` (per Cartesian component, Gaussian, centroid removed) and
a random symmetric strain ``eps = s (G + G^T)/2`` (G standard normal) with ``s`` log-uniform in
``[strain_min, strain_max] = [0.002, 0.1]`` (principal strains clipped to +-0.5). Loss per structure: ``w_f(sigma) mean (F - F*)^2``
with ``w_f = min(sigma^-2, weight_cap)``, plus ``stress_weight * mean ((D - D*)/N)^2 /
(k (sigma^2 + l^2 s))^2`` (both relative to the size of the response at that noise level; sigma^2 in
the stress scale accounts for the repulsion's share at large noise).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from engine_plugins.options import options_from_dict

SPRING_CONSTANT = 1.0  # eV/A^2
PSEUDO_ENERGY_UNITS = {"length": "angstrom", "energy": "eV", "time": "ps"}
DISTRIBUTIONS = ("loguniform", "lognormal")


@dataclass
class RMNoiseConfig:
    """Noise ladder and pseudo-energy constants (stored in the artifact's ``role_fields.noise``)."""

    sigma_min: float = 0.1
    sigma_max: float = 3.2
    distribution: str = "loguniform"
    strain_min: float = 0.002
    strain_max: float = 0.1
    strain_probability: float = 1.0  # fraction of structures that get a strain at all
    strain_stiffness: float = 1.0
    repulsion_radius_factor: float = 0.6
    repulsion_strength: float = 10.0  # eV/A^2
    weight_cap: float = 100.0
    stress_weight: float = 1.0

    def __post_init__(self) -> None:
        if not (0 < self.sigma_min < self.sigma_max):
            raise ValueError(f"noise: need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if not (0 < self.strain_min <= self.strain_max):
            raise ValueError(f"noise: need 0 < strain_min <= strain_max, got {self.strain_min}, {self.strain_max}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"noise.distribution '{self.distribution}': use one of {DISTRIBUTIONS}")
        if not 0.0 <= self.strain_probability <= 1.0:
            raise ValueError(f"noise.strain_probability must be in [0, 1], got {self.strain_probability}")
        for name in ("strain_stiffness", "repulsion_radius_factor", "weight_cap"):
            if not getattr(self, name) > 0:
                raise ValueError(f"noise.{name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RMNoiseConfig":
        return options_from_dict(cls, d, "RM noise options")


def sample_loguniform(n: int, lo: float, hi: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)


def sample_sigmas(n: int, cfg: RMNoiseConfig, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Displacement scales (A): log-uniform, or log-normal truncated to the range (mean at the middle)."""
    if cfg.distribution == "loguniform":
        return sample_loguniform(n, cfg.sigma_min, cfg.sigma_max, generator)
    lo, hi = math.log(cfg.sigma_min), math.log(cfg.sigma_max)
    z = torch.randn(n, generator=generator, dtype=torch.float64) * 0.25 * (hi - lo) + 0.5 * (lo + hi)
    return z.clamp(lo, hi).exp()


MAX_PRINCIPAL_STRAIN = 0.5


def random_symmetric_strain(scales: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """[B, 3, 3] symmetric strains ``s (G + G^T) / 2`` (diagonal std s, off-diagonal s / sqrt 2).

    Principal strains are clipped to +-``MAX_PRINCIPAL_STRAIN``: at large ``s`` a Gaussian tail would
    otherwise fold or flatten the cell (eigenvalue of ``I + eps`` near 0), whose periodic neighbour list
    then has no bound (a training run with ``strain_max`` 0.25 was killed for memory after ~17k steps).
    Strains inside the bound are returned bit for bit unchanged."""
    g = torch.randn(scales.shape[0], 3, 3, generator=generator, dtype=torch.float64)
    eps = scales.view(-1, 1, 1) * 0.5 * (g + g.transpose(1, 2))
    lam, vec = torch.linalg.eigh(eps)
    out = lam.abs().amax(dim=1) > MAX_PRINCIPAL_STRAIN
    if bool(out.any()):
        lam_c = lam[out].clamp(-MAX_PRINCIPAL_STRAIN, MAX_PRINCIPAL_STRAIN)
        eps = eps.clone()
        eps[out] = vec[out] @ torch.diag_embed(lam_c) @ vec[out].transpose(1, 2)
    return eps


# ------------------------------------------------------------------------------------------------
# covalent radii (ASE's table, copied for the elements ASE knows; no ase import on the hot path)
# ------------------------------------------------------------------------------------------------
def covalent_radius(symbol: str) -> float:
    from ase.data import atomic_numbers, covalent_radii

    if symbol not in atomic_numbers:
        raise ValueError(f"unknown element '{symbol}' (no covalent radius)")
    return float(covalent_radii[atomic_numbers[symbol]])


def repulsion_radii(type_names: Sequence[str], factor: float) -> torch.Tensor:
    """[T, T] ``factor * (r_cov,a + r_cov,b)`` (A); a non-element type name gets radius 0.7 A."""
    r = []
    for t in type_names:
        try:
            r.append(covalent_radius(t))
        except ValueError:
            r.append(0.7)
    rt = torch.tensor(r, dtype=torch.float64)
    return factor * (rt[:, None] + rt[None, :])


# ------------------------------------------------------------------------------------------------
# exact pseudo-energy and its response (one structure; float64)
# ------------------------------------------------------------------------------------------------
def min_image(delta: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """``delta`` [N, 3] brought to its nearest image by rounding fractional coordinates."""
    f = delta @ torch.linalg.inv(cell)
    return (f - torch.round(f)) @ cell


def displacements(x: torch.Tensor, cell: torch.Tensor, ref_frac: torch.Tensor, ref_cell: torch.Tensor) -> torch.Tensor:
    """``u_i``: site displacements in fractional coordinates (nearest image, mean removed), in the
    reference cell's metric (A)."""
    ds = x @ torch.linalg.inv(cell) - ref_frac
    ds = ds - torch.round(ds)
    ds = ds - ds.mean(0, keepdim=True)
    return ds @ ref_cell


def cell_strain(cell: torch.Tensor, ref_cell: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(``A = h0^-1 h - I``, ``eps = sym(A)``)."""
    a = torch.linalg.solve(ref_cell, cell) - torch.eye(3, dtype=cell.dtype)
    return a, 0.5 * (a + a.T)


def strain_stiffness(n_atoms: int, ref_cell: torch.Tensor, cfg: RMNoiseConfig) -> float:
    """``k_eps = strain_stiffness * k * N * l^2`` with ``l = (V0/N)^(1/3)`` (eV)."""
    v0 = float(torch.abs(torch.linalg.det(ref_cell)))
    ell = (v0 / n_atoms) ** (1.0 / 3.0)
    return cfg.strain_stiffness * SPRING_CONSTANT * n_atoms * ell * ell


def repulsion_terms(x: torch.Tensor, types: torch.Tensor, edge_index: torch.Tensor, edge_shift: torch.Tensor,
                    radii: torch.Tensor, strength: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Energy, forces [N, 3] and strain derivative D [3, 3] of the pair repulsion over a *full* edge list
    (both directions; each edge carries half of its pair)."""
    i, j = edge_index[0], edge_index[1]
    vec = x[j] - x[i] + edge_shift
    r = vec.norm(dim=1)
    r0 = radii.to(x.dtype)[types[i], types[j]]
    overlap = (r0 - r).clamp(min=0.0)
    energy = 0.25 * strength * overlap.square().sum()
    dphi = -strength * overlap  # phi'(r) per pair
    unit = vec / r.clamp(min=1e-12).unsqueeze(1)
    fj = -0.5 * dphi.unsqueeze(1) * unit  # on the neighbour, from this half-pair
    forces = torch.zeros_like(x).index_add_(0, j, fj).index_add_(0, i, -fj)
    d = 0.5 * torch.einsum("e,ea,eb->ab", dphi / r.clamp(min=1e-12), vec, vec)
    return energy, forces, d


def pseudo_energy(x: torch.Tensor, cell: torch.Tensor, ref_frac: torch.Tensor, ref_cell: torch.Tensor,
                  types: torch.Tensor, radii: torch.Tensor, cfg: RMNoiseConfig,
                  edge_index: Optional[torch.Tensor] = None, edge_shift: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The exact RM pseudo-energy ``E(x, h)`` (eV) of one structure (differentiable; see module doc).

    The repulsion needs the pairs within ``max(radii)``: pass a full edge list covering them, or
    leave it None to build one (periodic images included) here.
    """
    u = displacements(x, cell, ref_frac, ref_cell)
    _, eps = cell_strain(cell, ref_cell)
    k_eps = strain_stiffness(x.shape[0], ref_cell, cfg)
    e = 0.5 * SPRING_CONSTANT * u.square().sum() + 0.5 * k_eps * eps.square().sum()
    if edge_index is None or edge_shift is None:
        edge_index, shift_cells = periodic_neighbor_list(x.detach(), cell.detach(), float(radii.max()))
        edge_shift = shift_cells.to(x.dtype) @ cell  # differentiable in the cell
    i, j = edge_index[0], edge_index[1]
    r = (x[j] - x[i] + edge_shift).norm(dim=1)
    overlap = (radii.to(x.dtype)[types[i], types[j]] - r).clamp(min=0.0)
    return e + 0.25 * cfg.repulsion_strength * overlap.square().sum()


def response_targets(x: torch.Tensor, cell: torch.Tensor, ref_frac: torch.Tensor, ref_cell: torch.Tensor,
                     types: torch.Tensor, edge_index: torch.Tensor, edge_shift: torch.Tensor, radii: torch.Tensor,
                     cfg: RMNoiseConfig) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(energy, pseudo-forces [N, 3], strain derivative D = dE/d eta [3, 3]) in closed form.

    ``edge_index``/``edge_shift``: a full periodic edge list of ``x`` that includes every pair within
    the repulsion radius (the model's graph does, its cutoff being larger).
    """
    k = SPRING_CONSTANT
    u = displacements(x, cell, ref_frac, ref_cell)
    a, eps = cell_strain(cell, ref_cell)
    k_eps = strain_stiffness(x.shape[0], ref_cell, cfg)
    e_rep, f_rep, d_rep = repulsion_terms(x, types, edge_index, edge_shift, radii, cfg.repulsion_strength)
    energy = 0.5 * k * u.square().sum() + 0.5 * k_eps * eps.square().sum() + e_rep
    # dE/dx_i = k u_i (h^-1 h0)^T (the mean removal drops out: sum_j u_j = 0)
    forces = -k * u @ (torch.linalg.solve(cell, ref_cell)).T + f_rep
    # the site term is invariant under x -> x (I + eta), h -> h (I + eta): only strain and repulsion
    dmat = k_eps * (torch.eye(3, dtype=x.dtype) + a).T @ eps + d_rep
    return energy, forces, dmat


# ------------------------------------------------------------------------------------------------
# neighbour lists for periodic cells of any size (several images of a neighbour allowed)
# ------------------------------------------------------------------------------------------------
def periodic_neighbor_list(x: torch.Tensor, cell: torch.Tensor, cutoff: float,
                           pbc: Tuple[bool, bool, bool] = (True, True, True)) -> Tuple[torch.Tensor, torch.Tensor]:
    """Full edge list [2, E] (centre, neighbour) within ``cutoff`` and integer cell shifts [E, 3]
    (edge vector ``x[j] - x[i] + S @ cell``), with ASE's ``neighbor_list`` (any cell size)."""
    from ase.neighborlist import primitive_neighbor_list

    i, j, s = primitive_neighbor_list("ijS", pbc, cell.detach().cpu().numpy().astype(np.float64),
                                      x.detach().cpu().numpy().astype(np.float64), float(cutoff),
                                      self_interaction=False, use_scaled_positions=False)
    order = np.lexsort((j, i))
    ei = torch.as_tensor(np.stack([i[order], j[order]]), dtype=torch.long)
    return ei, torch.as_tensor(s[order], dtype=torch.float64)


@dataclass
class CrystalRecord:
    """One reference crystal for training: types, fractional coordinates, cell (float64)."""

    name: str
    symbols: list
    ref_frac: torch.Tensor
    ref_cell: torch.Tensor

    @property
    def n_atoms(self) -> int:
        return len(self.symbols)


@dataclass
class NoisyCrystal:
    """A noisy copy and its response targets."""

    record: CrystalRecord
    types: torch.Tensor
    x: torch.Tensor
    cell: torch.Tensor
    sigma: float
    strain_scale: float
    edge_index: torch.Tensor
    shift_cells: torch.Tensor
    edge_shift: torch.Tensor
    energy: torch.Tensor
    forces: torch.Tensor
    dmat: torch.Tensor


def make_noisy_crystal(rec: CrystalRecord, types: torch.Tensor, cutoff: float, radii: torch.Tensor,
                       cfg: RMNoiseConfig, generator: Optional[torch.Generator] = None,
                       sigma: Optional[float] = None, strain_scale: Optional[float] = None) -> NoisyCrystal:
    """Noise one reference crystal (draws from the CPU ``generator``), build its graph and targets."""
    if sigma is None:
        sigma = float(sample_sigmas(1, cfg, generator)[0])
    if strain_scale is None:
        strain_scale = float(sample_loguniform(1, cfg.strain_min, cfg.strain_max, generator)[0])
        if cfg.strain_probability < 1.0 and float(torch.rand(1, generator=generator, dtype=torch.float64)) >= cfg.strain_probability:
            strain_scale = 0.0
    eps = random_symmetric_strain(torch.tensor([strain_scale], dtype=torch.float64), generator)[0]
    cell = rec.ref_cell @ (torch.eye(3, dtype=torch.float64) + eps)
    xi = torch.randn(rec.n_atoms, 3, generator=generator, dtype=torch.float64)
    xi = xi - xi.mean(0, keepdim=True)
    x = rec.ref_frac @ cell + sigma * xi
    ei, sc = periodic_neighbor_list(x, cell, cutoff)
    es = sc @ cell
    energy, forces, dmat = response_targets(x, cell, rec.ref_frac, rec.ref_cell, types, ei, es, radii, cfg)
    return NoisyCrystal(rec, types, x, cell, float(sigma), float(strain_scale), ei, sc, es, energy, forces, dmat)


def rm_loss(pred_forces: torch.Tensor, pred_dmat: torch.Tensor, batch: Sequence[NoisyCrystal], cfg: RMNoiseConfig,
            node_batch: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Sigma-weighted force loss + relative strain-derivative loss, averaged over structures."""
    dev, dt = pred_forces.device, pred_forces.dtype
    target_f = torch.cat([b.forces for b in batch]).to(dev, dt)
    n = torch.tensor([b.record.n_atoms for b in batch], device=dev, dtype=dt)
    sig = torch.tensor([b.sigma for b in batch], device=dev, dtype=dt)
    ell2 = torch.tensor([float(torch.abs(torch.linalg.det(b.record.ref_cell)) / b.record.n_atoms) ** (2 / 3)
                         for b in batch], device=dev, dtype=dt)
    sts = torch.tensor([b.strain_scale for b in batch], device=dev, dtype=dt)
    sq = (pred_forces - target_f).square().mean(-1)
    nb = len(batch)
    per = torch.zeros(nb, device=dev, dtype=dt).index_add_(0, node_batch, sq) / n
    wf = torch.clamp(sig.pow(-2), max=cfg.weight_cap)
    force_loss = (wf * per).mean()
    target_d = torch.stack([b.dmat for b in batch]).to(dev, dt)
    dres = ((pred_dmat - target_d) / n.view(-1, 1, 1)).square().mean((1, 2))
    scale = SPRING_CONSTANT * (sig.square() + ell2 * sts)
    ws = torch.clamp(scale.pow(-2), max=cfg.weight_cap ** 2)
    stress_loss = (ws * dres).mean()
    loss = force_loss + cfg.stress_weight * stress_loss
    return loss, {"force_loss": force_loss.detach(), "stress_loss": stress_loss.detach(),
                  "force_mse": per.mean().detach(), "dmat_mse_per_atom": dres.mean().detach()}


__all__ = [
    "CrystalRecord", "NoisyCrystal", "PSEUDO_ENERGY_UNITS", "RMNoiseConfig", "SPRING_CONSTANT", "cell_strain",
    "covalent_radius", "displacements", "make_noisy_crystal", "min_image", "periodic_neighbor_list",
    "MAX_PRINCIPAL_STRAIN", "pseudo_energy", "random_symmetric_strain", "repulsion_radii", "repulsion_terms", "response_targets",
    "rm_loss", "sample_sigmas", "strain_stiffness",
]
