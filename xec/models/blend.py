"""FitBlend: the network's (u, v) blended per event with the classical fit's, run in the graph.

Why: past w ~ 4 cm the classical chi2 fit of the solid-angle pattern measures v better than the
network (val, 68 % half-widths: 3.1 vs 3.5 mm at w 6-9 cm, 3.7 vs 4.3 mm at 9-13 cm), while
shallower the network is 35-45 % better; their residuals are correlated only ~0.5-0.75. Fed to
the refitted heads as five more inputs the fit bought deep v 2 % and cost shallow u 7 %
(docs/performance.md, "The classical fit inside the graph"): a head has to relearn the whole map
to use it. A convex blend cannot lose what the network has: u, v = (1 - a) net + a fit with a
per-event weight a in (0, 1) from a small gate, which only has to learn *when* to trust the fit.

The gate reads what tells the two apart: the network's depth, the fit minus the network in u,
v, w, the fit's light scale and chi2 / ndf, and the log of the (u, v) disagreement. Not the
network's per-event sigmas: on val they bought nothing (v 0.809 vs 0.814 of the classical, theta
0.972 vs 0.968, cross-fitted), and without them the uncertainty heads still cannot move a point
estimate. It starts near a = 0.05 and is fitted after training (xec.train.blend); w stays the
network's (0.5x the classical width).
"""

from __future__ import annotations

import torch
from torch import nn

N_INPUTS = 8
COORDS = 2  # u, v


def gate_inputs(net_uvw: torch.Tensor, fit: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, N_INPUTS) gate inputs from the network's uvw (cm) and the solid-angle fit's features
    (xec.models.solidfit: u, v, w / ``scale``, log N0 - 10, log(1 + chi2/ndf))."""
    delta = fit[:, :3] * scale - net_uvw
    return torch.cat([net_uvw[:, 2:3] / 10.0, delta, fit[:, 3:5], torch.log(delta[:, :2].abs() + 0.01)], dim=1)


class FitBlend(nn.Module):
    def __init__(self, hidden: int = 16):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(N_INPUTS, hidden), nn.GELU(), nn.Linear(hidden, COORDS))
        nn.init.zeros_(self.gate[2].weight)
        nn.init.constant_(self.gate[2].bias, -3.0)  # a = 0.05: the network's position

    def weight(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, 2) weight of the fit in u and v."""
        return torch.sigmoid(self.gate(inputs))

    def forward(self, net_uvw: torch.Tensor, fit_uvw: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """(B, 3) blended uvw (cm): u, v mixed, w the network's."""
        a = self.weight(inputs)
        uv = (1.0 - a) * net_uvw[:, :COORDS] + a * fit_uvw[:, :COORDS]
        return torch.cat([uv, net_uvw[:, COORDS:]], dim=1)
