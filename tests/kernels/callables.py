"""Python callables as kernels built another way would be (the gpu-mode convention), with
bugs a probe diagnosis must place: they wrap PyTorch SDPA."""

import torch.nn.functional as F


def drops_last_key(q, k, v, *, causal: bool, scale: float):
    """The last key never reaches the output (a key loop that ends one key early)."""
    k, v = k[:, :, :-1], v[:, :, :-1]
    if causal:   # top-left causal over the keys that remain
        import torch
        Sq, Sk = q.shape[-2], k.shape[-2]
        mask = torch.ones(Sq, Sk, dtype=torch.bool, device=q.device).tril()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, scale=scale)
