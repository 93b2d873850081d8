# Reference DDIM timestep layouts of diffusers' DDIMScheduler.set_timesteps
# (timestep_spacing 'linspace' and 'trailing'), re-implemented with numpy as
# diffusers writes them, ascending. Writes test/fixtures/ddim_layouts.json.
#   /usr/bin/python3 test/reference/ddim_layouts_ref.py
import json
import os

import numpy as np

T = 1000
out = {"T": T, "linspace": {}, "trailing": {}}
for n in [1, 2, 3, 7, 9, 27, 37, 50, 111, 333, 501, 777, 999, 1000]:
    out["linspace"][str(n)] = np.linspace(0, T - 1, n).round().astype(np.int64).tolist()
    out["trailing"][str(n)] = (np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1)[::-1].tolist()
path = os.path.join(os.path.dirname(__file__), "..", "fixtures", "ddim_layouts.json")
with open(path, "w") as f:
    json.dump(out, f)
