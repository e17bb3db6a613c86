"""Per-layer activation predictors (PowerInfer / Deja Vu): from the MLP input x, guess which neurons will be active.

Architecture: x [H] -> Linear(H, r) -> ReLU -> Linear(r, I) -> logits [I]; trained with binary cross-entropy on
recorded calibration activations, label_i = 1[|a_i| > t_l] (the layer's static threshold, so for ReLU MLPs with
t = 0 the label is "non-zero").  The cut-off on the logit is then set on held-out calibration tokens so that a
fraction `recall_target` of the truly active neurons is predicted active: a missed neuron is an error in the output,
an extra one only costs compute.  Cost per token: 2*(H*r + r*I) FLOPs, counted in every speed figure.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsealign.sparse.config import PredictorConfig
from sparsealign.sparse.metrics import recall_cutoff, recall_precision


class LowRankPredictor(nn.Module):
    def __init__(self, hidden: int, inter: int, rank: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, rank, bias=False)
        self.fc2 = nn.Linear(rank, inter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., H] -> [..., I] logits
        return self.fc2(torch.relu(self.fc1(x)))


def train_predictor(
    x: torch.Tensor, labels: torch.Tensor, cfg: PredictorConfig, *, seed: int = 0
) -> tuple[LowRankPredictor, float, dict[str, float]]:
    """Fit on the first (1 - val_fraction) of the tokens, set the cut-off on the rest.

    x [N, H] float, labels [N, I] bool.  Returns (predictor, logit cut-off, validation recall/precision).
    """
    torch.manual_seed(seed)
    n_val = max(1, int(round(cfg.val_fraction * x.shape[0])))
    x_tr, y_tr = x[:-n_val].float(), labels[:-n_val].float()
    x_va, y_va = x[-n_val:].float(), labels[-n_val:]
    model = LowRankPredictor(x.shape[1], labels.shape[1], cfg.rank)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(cfg.epochs):
            for batch in torch.randperm(x_tr.shape[0], generator=gen).split(cfg.batch_size):
                loss = nn.functional.binary_cross_entropy_with_logits(model(x_tr[batch]), y_tr[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
    model.eval().requires_grad_(False)
    logits = model(x_va)
    cutoff = recall_cutoff(logits[y_va], cfg.recall_target)
    recall, precision = recall_precision(logits >= cutoff, y_va)
    density = float((logits >= cutoff).float().mean())
    return model, cutoff, {"val_recall": recall, "val_precision": precision, "val_predicted_density": density}
