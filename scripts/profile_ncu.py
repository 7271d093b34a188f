"""One launch each of the kernel (given tiles) and SDPA's backends on one shape, for ncu.

Usage: ncu --clock-control none -k regex:'flashcore_fwd|flash_fwd|sdpa' --section ... \
           python scripts/profile_ncu.py B,H,S,D [causal] [flash] [cudnn] [m_frags,nwarps,block_n,kv_stages ...]
The kernel is the registry entry in use ($FLASHCORE_REGISTRY_KERNEL, e.g. flashcore_hopper_ov);
SDPA's flash backend runs unless cudnn alone is named (issue 25: Nsight Compute beside cuDNN).
"""

import sys

import cupy as cp

from harness.run.gpu import prepare
from harness.check.shapes import parse_shape

BACKENDS = ("flash", "cudnn")
shape = parse_shape(sys.argv[1])
words = sys.argv[2:]
causal = "causal" in words
backends = [b for b in BACKENDS if b in words] or ["flash"]
configs = [dict(zip(("m_frags", "nwarps", "block_n", "kv_stages"), map(int, a.split(","))))
           for a in words if a != "causal" and a not in BACKENDS] or [{}]
for cfg in configs:
    pre = prepare("full", shape, causal, "randn", 0, **cfg)
    print("flashcore", pre.variant.kernel, pre.variant.label, cfg, flush=True)
    pre.launch()
cp.cuda.runtime.deviceSynchronize()
import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
q, k, v = (torch.from_dlpack(pre.bufs[n]) for n in "QKV")
for b in backends:
    with sdpa_kernel([{"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[b]]):
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.cuda.synchronize()
    print("sdpa", b, "done", flush=True)
