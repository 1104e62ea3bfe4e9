"""Cost curves: analytic table against the closed form, measured times per config and grid, the figure."""

import logging
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from ultragen.bench import cost_table, plot_cost_curves, time_configs, time_layers
from ultragen.models.attention import VideoGrid

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESET = CONFIGS / "model" / "wan2.1_t2v_1.3b.yaml"  # 30 layers, width 1536
CONFIG = {name: [PRESET, CONFIGS / "experiments" / f"{name}.yaml"] for name in ("full", "t3_multiscale", "swin")}


def test_cost_table_matches_full_attention_closed_form_and_skips_grids_a_config_cannot_run(caplog):
    grids = {"1080P": VideoGrid(21, 68, 120), "4K": VideoGrid(21, 136, 240)}
    with caplog.at_level(logging.WARNING, logger="ultragen.bench"):
        table = cost_table(CONFIG, grids)
    for res, grid in grids.items():
        n, d = grid.numel, 1536
        assert table["full"][res].total == pytest.approx(30 * (8 * n * d * d + 4 * n * n * d), rel=1e-12)
    assert table["t3_multiscale"]["1080P"] is None and table["t3_multiscale"]["4K"].total > 0
    assert "t3_multiscale skipped on grid 21x68x120: token grid 21x68x120 (TxHxW) is not divisible" in caplog.text
    assert table["swin"]["4K"].total < table["full"]["4K"].total


def test_time_configs_measures_fitting_configs_and_restores_threads():
    threads = torch.get_num_threads()
    grids = {"a": VideoGrid(1, 4, 8), "b": VideoGrid(2, 8, 8)}
    times = time_configs(CONFIG, grids, layers=[0, 1], num_heads=2, head_dim=8, repeats=1, warmup=0, threads=1)
    assert set(times) == set(CONFIG) and all(set(row) == set(grids) for row in times.values())
    assert all(times[name][res] > 0 for name in ("full", "swin") for res in grids)
    assert all(t is None for t in times["t3_multiscale"].values())
    assert torch.get_num_threads() == threads


class Counter(nn.Module):
    """Stands in for a SelfAttention: records the order of its calls."""

    def __init__(self, name: str, calls: list):
        super().__init__()
        self.name, self.calls = name, calls
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x, ctx):
        self.calls.append(self.name)
        return x * self.scale


def test_time_layers_interleaves_repeats_after_warmup():
    calls = []
    x = torch.ones(1, 4, 2, requires_grad=True)
    best = time_layers({"a": Counter("a", calls), "b": Counter("b", calls)}, x, None, repeats=2, warmup=1)
    assert calls == ["a", "b"] * 3
    assert set(best) == {"a", "b"} and all(t > 0 for t in best.values())
    with pytest.raises(ValueError, match="repeats=0 must be >= 1"):
        time_layers({}, x, None, repeats=0)


def test_plot_cost_curves_has_three_panels_and_omits_configs_without_measurements():
    grids = {"1080P": VideoGrid(21, 68, 120), "4K": VideoGrid(21, 136, 240)}
    small = {"1080P": VideoGrid(1, 4, 8), "4K": VideoGrid(2, 8, 8)}
    analytic = cost_table(CONFIG, grids)
    measured = {"full": {"1080P": 0.5, "4K": 2.0}, "t3_multiscale": {"1080P": None, "4K": None}}
    fig = plot_cost_curves(analytic, measured, grids, small)
    assert isinstance(fig, Figure)
    flops, speedup, seconds = (ax for ax in fig.axes if ax.get_title())
    assert [line.get_label() for line in flops.get_lines()] == list(CONFIG)
    assert list(speedup.get_lines()[0].get_ydata()) == [1.0, 1.0]  # full over itself
    assert [line.get_label() for line in seconds.get_lines()] == ["full"]
    with pytest.raises(ValueError, match="reference 'Full' is not one of the analytic configs"):
        plot_cost_curves(analytic, measured, grids, small, reference="Full")


@pytest.mark.parametrize("script", ["attention.py", "dit_step.py"])
def test_benchmarks_print_a_ratio_row_for_every_strategy(script):
    """Both benchmark scripts run every strategy side by side with full attention and print measured, analytic and
    measured/analytic ratios (the figures themselves are machine-dependent and not checked)."""
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    small = ["--grid", "1x8x8", "--pad", "replicate", "--repeats", "1", "--warmup", "0", "--sta-tile", "1x4x4",
             "--topk-cube", "1x4x4", "--topk-k", "2", "--local-windows", "2x2", "--hier-windows", "2x2",
             "--t3-windows", "1x2x2"]
    width = ["--heads", "2", "--head-dim", "8"]
    run = subprocess.run([sys.executable, script, *small, *width], cwd=bench, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {line.split()[0]: line.split()[1:] for line in run.stdout.splitlines()[2:]}
    assert set(rows) == {"full", "local", "swin", "global", "hierarchical", "ultragen", "t3", "sta", "topk", "nabla"}
    assert rows["full"][1:] == (["1.00", "1.00", "1.00", "1.00"] if script == "attention.py" else ["1.00", "1.00", "1.00"])
