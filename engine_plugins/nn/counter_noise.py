"""Counter-based Gaussian noise keyed by (seed, step, attempt, global atom id).

Why: a learned propagator draws its prior noise per atom. If every rank draws the noise of the
atoms it holds from a stateful generator, 1 rank and N ranks give different trajectories. A
counter-based generator is a pure function of the key, so any process that knows an atom's global
id (LAMMPS tag, OpenMM particle index + 1) draws exactly the same three numbers for it, ghosts and
periodic images included.

The generator (uint64 arithmetic, wrapping; ``>>`` is a logical shift)::

    mix(z)   = splitmix64 finaliser: z ^= z >> 30; z *= 0xBF58476D1CE4E5B9;
                                      z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31
    key      = mix(mix(mix(seed + G) ^ step + G) ^ attempt + G)       G = 0x9E3779B97F4A7C15
    u(tag,c) = ((mix(key ^ mix(tag * 8 + c)) >> 11) + 1) * 2**-53       in (0, 1]
    z[k]     = sqrt(-2 ln u(tag, 2k)) * cos(2 pi u(tag, 2k + 1))        k = 0, 1, 2 (x, y, z)

``lammps/src/ep_counter_noise.h`` is the same function in C++; the integers agree bit for bit and
the normals to the last ulp of the platform's ``log``/``cos`` (about 1e-16 relative).
Precedence in ``key``: ``(mix(seed + G) ^ step) + G`` etc., i.e. xor first, then add.
"""

from __future__ import annotations

import math

import torch

_M64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """Two's-complement int64 spelling of a uint64 constant (torch has no uint64 arithmetic)."""
    value &= _M64
    return value - (1 << 64) if value >= (1 << 63) else value


GOLDEN = _signed(0x9E3779B97F4A7C15)
MUL1 = _signed(0xBF58476D1CE4E5B9)
MUL2 = _signed(0x94D049BB133111EB)


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser on int64 tensors holding uint64 bit patterns."""
    z = (z ^ _shr(z, 30)) * -4658895280553007687  # 0xBF58476D1CE4E5B9 as int64
    z = (z ^ _shr(z, 27)) * -7723592293110705685  # 0x94D049BB133111EB as int64
    return z ^ _shr(z, 31)


def noise_key(seed: int, step: int, attempt: int) -> torch.Tensor:
    """The per-(seed, step, attempt) key as a 0-d int64 tensor (seed, step, attempt >= 0, < 2**63)."""
    golden = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
    k = mix64(torch.tensor(seed, dtype=torch.long) + golden)
    k = mix64((k ^ step) + golden)
    return mix64((k ^ attempt) + golden)


def counter_uniform(key: torch.Tensor, tags: torch.Tensor, counters: int) -> torch.Tensor:
    """Uniforms in (0, 1], shape [N, counters], for global ids ``tags`` (int64)."""
    c = torch.arange(counters, dtype=torch.long, device=tags.device)
    bits = mix64(key.to(tags.device) ^ mix64(tags.to(torch.long)[:, None] * 8 + c[None, :]))
    return (_shr(bits, 11) + 1).to(torch.float64) * (2.0 ** -53)


def counter_normal(seed: int, step: int, tags: torch.Tensor, attempt: int = 0) -> torch.Tensor:
    """Standard normals [N, 3] (float64) for atoms with global ids ``tags``.

    ``seed`` is any integer below 2**64, ``step`` the engine's step (jump) number, ``attempt`` the
    redraw counter of a rejected jump (0 for the first draw). Same key, same tag: same numbers,
    on any rank and device.
    """
    u = counter_uniform(noise_key(seed, step, attempt), tags, 6)
    radius = torch.sqrt(-2.0 * torch.log(u[:, 0::2]))
    return radius * torch.cos((2.0 * math.pi) * u[:, 1::2])
