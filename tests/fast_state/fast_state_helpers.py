import torch
import torch.nn.functional as F


def unit_keys(batch: int, length: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, length, dim, generator=g, dtype=torch.float64), dim=-1)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
