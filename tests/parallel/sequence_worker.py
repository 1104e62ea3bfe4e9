"""One rank of the sequence-parallel parity check (launched twice by test_sequence.py with RANK/WORLD_SIZE set).

Per case: the same seeded DiT is run whole (the one-process reference) and split over the group; rank 0 writes the
largest output and gradient differences (gradients summed over the group) to the JSON file named by argv[1].
"""

import json
import sys
from functools import partial

import torch
import torch.distributed as dist

from ultragen.models.attention import LoRAOptions, Padding, SwinAttention, UltraGenAttention, WindowOptions
from ultragen.models.wan import WanDiT
from ultragen.parallel.sequence import apply_sequence_parallel

NET = dict(in_dim=4, text_dim=12, dim=32, ffn_dim=64, num_heads=4, num_layers=3, freq_dim=16)
UG = dict(local_windows=WindowOptions(counts=[[2, 2], [3, 3]]), hier_windows=WindowOptions(counts=[[2, 2], [3, 3]]),
          lora=LoRAOptions(rank=4, targets=["q", "k", "v", "o"]), padding=Padding("replicate"))
CASES = {  # name: (network options, latent (F, H, W) -> token grid F x H/2 x W/2, per-token timesteps)
    "full": ({}, (3, 10, 14), False),  # 3x5x7 = 105 tokens: the last rank holds one padding token
    "ultragen": (dict(attention=partial(UltraGenAttention, **UG), full_attention_layers=[0]), (3, 10, 14), True),
    "ultragen-interpolate-global": (  # the compressed branches keep the release's pad policy under the split
        dict(attention=partial(UltraGenAttention, **{**UG, "padding": Padding("interpolate"),
                                                        "local_windows": WindowOptions(counts=[[1, 1]])}),
             full_attention_layers=[0]), (2, 10, 14), False),
    "swin": (dict(attention=partial(SwinAttention, padding=Padding("replicate"))), (2, 10, 14), False),
}


def build(options: dict) -> WanDiT:
    torch.manual_seed(0)
    net = WanDiT(**NET, **options)
    with torch.no_grad():  # make every zero-initialised part (head, LoRA B, gates) live, so every gradient counts
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def main() -> None:
    dist.init_process_group("gloo")
    results = {}
    for name, (options, (f, h, w), per_token) in CASES.items():
        reference, split = build(options), build(options)
        apply_sequence_parallel(split, dist.group.WORLD)
        seen = []  # tokens each rank's blocks hold
        split.blocks[-1].register_forward_hook(lambda module, args, out: seen.append(out.shape[1]))
        torch.manual_seed(1)
        x, c = torch.randn(2, 4, f, h, w), torch.randn(2, 5, 12)
        t = torch.tensor([300.0, 800.0])
        if per_token:  # TI2V: the first latent frame clean, per-token modulation split with the tokens
            t = t[:, None].repeat(1, f * (h // 2) * (w // 2))
            t[:, : (h // 2) * (w // 2)] = 0.0
        weight = torch.randn(2, 4, f, h, w)
        outputs = []
        for net in (reference, split):
            out = net(x, t, c)
            (out * weight).sum().backward()
            outputs.append(out.detach())
        grads = {}
        for (key, p), q in zip(reference.named_parameters(), split.parameters()):
            g = q.grad.clone()
            dist.all_reduce(g)  # each rank holds its share of the gradient
            grads[key] = ((g - p.grad).abs().max() / p.grad.abs().max().clamp_min(1e-12)).item()
        results[name] = {
            "output": (outputs[1] - outputs[0]).abs().max().item(),
            "output_scale": outputs[0].abs().max().item(),
            "worst_grad": max(grads, key=grads.get),
            "grad_rel": max(grads.values()),
            "zero_grads": [k for k, p in reference.named_parameters() if not p.grad.abs().max() > 0],
            "tokens": f * (h // 2) * (w // 2),
            "block_tokens": seen[0],
        }
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as fh:
            json.dump(results, fh, indent=1)
    dist.barrier()  # without it a rank may tear gloo down while the other still talks to it (SIGABRT at exit)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
