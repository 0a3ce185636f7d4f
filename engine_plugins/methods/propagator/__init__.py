"""Learned large-timestep propagation (LiFlow-style flow matching): the contract every part shares.

Role signature (``propagator`` and ``corrector``; see ``engine_plugins.export.roles``)::

    forward(x_t: Tensor[N, 3], x_cond: Tensor[N, 3], types: Tensor[N] (int64),
            edge_index: Tensor[2, E] (int64), edge_shift: Tensor[E, 3],
            t: Tensor[] (0-d, flow time in [0, 1]), temperature: Tensor[N] (K),
            n_local: int) -> velocity: Tensor[N, 3]

* Lengths in the artifact's length unit (angstrom for the shipped models), model dtype.
* ``x_cond`` is the conditioning frame X_tau (propagator) or the frame to correct (corrector);
  ``x_t`` the flow state. The graph is built once per jump on ``x_cond`` (cutoff from the
  metadata) and shared by every flow step: edge vectors of either geometry are
  ``x[j] - x[i] + edge_shift[e]``. Ghost nodes (LAMMPS halo) come after the ``n_local`` owned ones.
* The velocity is d x_t / d t of the flow; only rows ``< n_local`` are used by the caller.

The engine owns the ODE loop (``flow_steps`` K and ``solver`` from the metadata)::

    x_0 = x_cond + sigma_i * z_i,   z_i = counter_normal(seed, step, [tag_i], attempt)
    euler: x_{k+1} = x_k + (1/K) v(x_k, k/K)
    heun:  x' = x_k + h v(x_k, t_k); x_{k+1} = x_k + h/2 (v(x_k, t_k) + v(x', t_k + h))
    displacement d_i = x_K,i - x_cond,i, minus its mass-weighted mean (no centre-of-mass drift)

Between flow steps a multi-rank engine refreshes the ghosts' displacement ``x_t - x_cond``
(translation invariant, so no periodic shift is needed). The prior width (Maxwell-Boltzmann)::

    sigma_i = scale[type_i] * sqrt(k_B[eV/K] * T / mass[type_i][amu])    (angstrom)

with ``role_fields.prior = {"kind": "maxwell_boltzmann", "scale": {type: s}, "mass": {type: amu}}``
(scale 1 gives 0.1 angstrom for Li at 800 K). ``attempt`` is a per-atom draw counter (0 at the
first draw). A jump is redrawn with every ``attempt_i + 1`` when any displacement is non-finite or
longer than ``role_fields.max_displacement`` (angstrom), at most ``max_attempts`` times, then the run
stops with an error. Contact redraw (``role_fields.contact``, see ``contact.py``): after an accepted
draw, the atoms closer than ``min_distance[type pair]`` to a graph neighbour at ``x_cond + d`` get
``attempt_i + 1`` and the jump is integrated again, at most ``rounds`` times, then accepted.

The corrector is the same network and loop, trained to map X + N(0, s^2) back to X; it runs after
each propagator jump with its own seed stream (``attempt`` offset by 2**20). With
``role_fields.passes`` P > 1 it runs P times per jump, each pass on the frame the last one left
(graph rebuilt), pass p with ``attempt`` offset 2**20 + p * 2**16.
"""

from engine_plugins.methods.propagator.prior import KB_EV_PER_K, maxwell_boltzmann_sigma

__all__ = ["KB_EV_PER_K", "maxwell_boltzmann_sigma"]
