"""Run readers: TensorBoard scalars and metric CSVs come back exactly as written; the plot has a panel per tag."""

import pytest
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter

from ultragen.eval.runs import plot_scalars, read_csv_scalars, read_scalars

LOSS = [(0, 1.5), (1, 0.75), (2, 0.5), (5, 0.25)]  # exact in float32
LR = [(0, 0.125), (5, 0.0625)]


def write_events(logdir, points=None) -> None:
    with SummaryWriter(str(logdir)) as writer:
        for step, value in points or LOSS:
            writer.add_scalar("train/loss", value, step)
        for step, value in LR:
            writer.add_scalar("lr", value, step)


def test_read_scalars_returns_every_point_exactly(tmp_path):
    write_events(tmp_path)
    scalars = read_scalars(tmp_path)
    assert set(scalars) == {"train/loss", "lr"}
    assert scalars["train/loss"] == LOSS
    assert scalars["lr"] == LR


def test_read_scalars_keeps_more_than_tensorboards_default_sample(tmp_path):
    points = [(step, float(step % 7)) for step in range(10_050)]
    write_events(tmp_path, points)
    assert read_scalars(tmp_path, tags=["train/loss"]) == {"train/loss": points}


def test_read_scalars_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        read_scalars(tmp_path)
    write_events(tmp_path)
    with pytest.raises(KeyError, match=r"\['val/loss'\] are not in .*present: \['lr', 'train/loss'\]"):
        read_scalars(tmp_path, tags=["val/loss"])


def test_read_csv_scalars_skips_empty_cells(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,lr,step,train/loss,val/loss\n,0.001,0,,\n0,,0,1.5,\n0,,2,0.5,\n0,,2,,0.25\n")
    assert read_csv_scalars(path) == {
        "epoch": [(0, 0.0), (2, 0.0), (2, 0.0)],
        "lr": [(0, 0.001)],
        "train/loss": [(0, 1.5), (2, 0.5)],
        "val/loss": [(2, 0.25)],
    }


def test_read_csv_scalars_errors_name_the_problem(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("metric,value\nhd_mse,0.5\n")
    with pytest.raises(ValueError, match=r"has no 'step' column; columns: \['metric', 'value'\]"):
        read_csv_scalars(path)
    path.write_text("step,loss\n0,1.0\n1,nan?\n")
    with pytest.raises(ValueError, match=r"line 3, column 'loss'"):
        read_csv_scalars(path)


def test_plot_scalars_draws_one_panel_per_tag_and_one_line_per_run(tmp_path):
    write_events(tmp_path)
    runs = {"tensorboard": read_scalars(tmp_path), "csv": {"train/loss": LOSS}}
    fig = plot_scalars(runs, ncols=2)
    assert isinstance(fig, Figure)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(panels) == {"lr", "train/loss"}
    assert [line.get_label() for line in panels["train/loss"].get_lines()] == ["tensorboard", "csv"]
    assert [line.get_label() for line in panels["lr"].get_lines()] == ["tensorboard"]
    assert list(panels["train/loss"].get_lines()[1].get_ydata()) == [v for _, v in LOSS]
    with pytest.raises(KeyError, match="in none of the runs"):
        plot_scalars(runs, tags=["val/loss"])


def test_read_metric_table_returns_the_values_and_skips_ultragen_test_wrote(tmp_path):
    from ultragen.eval.runs import read_metric_table
    from ultragen.lit.evaluation import write_table

    values, skipped = {"hd_mse": 0.1 + 0.2, "color_correct": 0.75}, {"hd_fvd": "I3D weights not found at x.pt"}
    _, csv_path = write_table(values, skipped, tmp_path, {"step": 3})
    assert read_metric_table(csv_path) == (values, skipped)
    with pytest.raises(ValueError, match="is not a metric table"):
        read_metric_table(tmp_path / "test_metrics.json")
