"""One launch each of the kernel (given tiles) and SDPA's flash backend on one shape, for ncu.

Usage: ncu --clock-control none -k regex:'flashcore_fwd|flash_fwd' --section ... \
           python scripts/profile_ncu.py B,H,S,D [causal] [m_frags,nwarps,block_n,kv_stages ...]
"""

import sys

import cupy as cp

from harness.run.gpu import prepare
from harness.check.shapes import parse_shape

shape = parse_shape(sys.argv[1])
causal = "causal" in sys.argv[2:]
configs = [dict(zip(("m_frags", "nwarps", "block_n", "kv_stages"), map(int, a.split(","))))
           for a in sys.argv[2:] if a != "causal"] or [{}]
for cfg in configs:
    pre = prepare("full", shape, causal, "randn", 0, **cfg)
    print("flashcore", pre.variant.label, cfg, flush=True)
    pre.launch()
cp.cuda.runtime.deviceSynchronize()
import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
q, k, v = (torch.from_dlpack(pre.bufs[n]) for n in "QKV")
with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
torch.cuda.synchronize()
print("sdpa flash done", flush=True)
