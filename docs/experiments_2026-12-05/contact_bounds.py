"""Experiment (not part of the package): the shortest distance of every species pair in reference MD.

python contact_bounds.py DATA_DIR EXCLUDE_PREFIX OUT.json
e.g. python contact_bounds.py out/transport Li0.125-s1.68 out/contact_bounds.json  (every case but the
test material's; every 10th frame)."""
import itertools
import json
import sys

import numpy as np
from MDAnalysis.lib.distances import distance_array

from engine_plugins.data.trajectories import load_cases

data, exclude, out_path = sys.argv[1:4]
out: dict[str, float] = {}
cases = [c for c in load_cases(data) if not c.case_id.startswith(exclude)]
for c in cases:
    u = c.universe()
    names = sorted(set(c.type_map.values()))
    sel = {sp: u.select_atoms("type " + " ".join(k for k, v in c.type_map.items() if v == sp)) for sp in names}
    for ts in u.trajectory[::10]:
        for a, b in itertools.combinations_with_replacement(names, 2):
            d = distance_array(sel[a].positions, sel[b].positions, box=ts.dimensions)
            if a == b:
                np.fill_diagonal(d, np.inf)
            out[f"{a}-{b}"] = min(out.get(f"{a}-{b}", np.inf), float(d.min()))
print(len(cases), "cases:", out)
json.dump(out, open(out_path, "w"))
