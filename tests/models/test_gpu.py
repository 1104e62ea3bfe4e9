"""GPU twins of the kernel and strategy tests (skipped without CUDA; run them when a GPU is lent)."""

from functools import partial

import pytest
import torch

from ultragen.models.attention import LoRAOptions, Padding, attention
from ultragen.models.attention.global_local import UltraGenAttention
from ultragen.models.wan import WanDiT

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("backend", ["sdpa", "flash", "efficient"])
def test_cuda_kernels_match_math_in_bf16(backend):
    q, k, v = (torch.randn(2, 1024, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ref = attention(q.float(), k.float(), v.float(), backend="math")
    torch.testing.assert_close(attention(q, k, v, backend=backend).float(), ref, atol=2e-2, rtol=2e-2)


def test_ultragen_dit_matches_cpu_on_cuda():
    def build():
        torch.manual_seed(0)
        net = WanDiT(16, 32, dim=128, ffn_dim=256, num_heads=2, num_layers=3, full_attention_layers=[0],
                     attention=partial(UltraGenAttention, lora=LoRAOptions(rank=8), padding=Padding("replicate")))
        torch.nn.init.normal_(net.head.head.weight, std=0.1)  # Wan zero-inits the head; make the output informative
        return net

    x, t, c = torch.randn(1, 16, 3, 34, 60), torch.tensor([700.0]), torch.randn(1, 8, 32)
    cpu = build()(x, t, c)
    gpu = build().cuda()(x.cuda(), t.cuda(), c.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, atol=2e-3, rtol=2e-3)


def test_flex_backend_matches_sdpa_dense_and_with_a_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    q, k, v = (torch.randn(1, 256, 2, 64, device="cuda") for _ in range(3))
    ref = attention(q, k, v, backend="math")
    torch.testing.assert_close(attention(q, k, v, backend="flex"), ref, atol=1e-4, rtol=1e-4)
    causal = create_block_mask(lambda b, h, i, j: i >= j, None, None, 256, 256, device="cuda")
    mask = torch.ones(256, 256, dtype=torch.bool, device="cuda").tril()
    dense = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=mask)
    torch.testing.assert_close(attention(q, k, v, backend="flex", block_mask=causal), dense.transpose(1, 2).flatten(2),
                               atol=1e-4, rtol=1e-4)
