"""Sequence parallelism: 2 gloo ranks split each clip's tokens and reproduce the one-process forward and gradients."""

import json
import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from ultragen.models.attention import AttentionContext, LocalWindowAttention, MultiScaleWindowAttention, VideoGrid
from ultragen.models.blocks import SelfAttention
from ultragen.models.wan import WanDiT
from ultragen.parallel.sequence import check_sequence_parallel, windows_forward

WORKER = Path(__file__).with_name("sequence_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def parity(tmp_path_factory) -> dict:
    """The worker's report: per case, output and gradient differences between 2 split ranks and one process."""
    out = tmp_path_factory.mktemp("sp") / "parity.json"
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    ranks = [subprocess.Popen([sys.executable, str(WORKER), str(out)], env=env | {"RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    logs = [p.communicate(timeout=300)[0] for p in ranks]
    assert all(p.returncode == 0 for p in ranks), logs[0][-3000:] + logs[1][-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", ["full", "ultragen", "ultragen-interpolate-global", "swin"])
def test_two_ranks_match_one_process(parity, case):
    """Forward within fp32 rounding, summed gradients of every parameter within 1e-4 of their largest entry;
    each rank's blocks hold half the (padded) tokens: 105 tokens -> 53 per rank."""
    r = parity[case]
    assert r["block_tokens"] == -(-r["tokens"] // 2) < r["tokens"]
    assert r["output"] <= 1e-5 * r["output_scale"]
    assert r["grad_rel"] < 1e-4, r["worst_grad"]
    assert r["zero_grads"] == []


def test_indivisible_head_count_is_named():
    net = WanDiT(4, 12, dim=24, ffn_dim=48, num_heads=6, num_layers=2)
    check_sequence_parallel(net, 3)
    with pytest.raises(ValueError, match=r"sp_degree=4 does not divide num_heads=6.*choose sp_degree from \[1, 2, 3, 6\]"):
        check_sequence_parallel(net, 4)


def test_strategy_without_split_forward_is_named():
    net = WanDiT(4, 12, dim=24, ffn_dim=48, num_heads=2, num_layers=2,
                 attention=partial(MultiScaleWindowAttention, windows=[[1, 2, 2]]))
    with pytest.raises(ValueError, match="no split forward for MultiScaleWindowAttention"):
        check_sequence_parallel(net, 2)


def test_resampled_local_windows_are_refused():
    """pad=interpolate resizes the token plane before the q/k norms: a split cannot reproduce it, so it raises."""
    strategy = LocalWindowAttention(24, 2, 0, windows=[[2, 2]], pad="interpolate")
    attn = SelfAttention(24, 2, strategy)
    ctx = AttentionContext(VideoGrid(1, 5, 5), WanDiT(4, 12, 24, 48, 2, 1).rope, torch.zeros(1, 256))
    with pytest.raises(ValueError, match="pad=interpolate resizes the 1x5x5 token grid.*use pad: replicate"):
        windows_forward(strategy, None, attn, torch.randn(1, 13, 24), ctx)
