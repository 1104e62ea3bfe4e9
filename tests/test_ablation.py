"""`ultragen ablate --quick`: every row is trained, sampled, scored and reported (numbers are smoke-run values)."""

import csv
import math
from pathlib import Path


from ultragen.ablation import METRICS, ROWS, RowResult, slug, verdicts
from ultragen.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_quick_ablation_writes_the_report_with_every_row(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("sys.argv", ["ultragen"])
    main(["ablate", "--quick", "--out", str(tmp_path), "--logdir", str(tmp_path / "runs")])
    assert "wrote" in capsys.readouterr().out
    report = (tmp_path / "ablation.md").read_text()
    for name in ROWS:
        assert f"| {name} |" in report and (tmp_path / "ablation" / f"strip_{slug(name)}.png").is_file()
    rows = list(csv.DictReader(open(tmp_path / "ablation" / "results.csv")))
    assert [r["row"] for r in rows] == list(ROWS)
    assert all(math.isfinite(float(r[key])) for r in rows for key in (*METRICS, "attention_gflop"))
    flops = {r["row"]: float(r["attention_gflop"]) for r in rows}
    assert flops["full attention"] > flops["UltraGen (full model)"] > flops["local only"]  # the cost model per row
    assert all((tmp_path / "ablation" / f"{key}.png").is_file() for key in METRICS)
    assert len(list((tmp_path / "runs").rglob("events.out.tfevents.*"))) == len(ROWS)  # one TensorBoard run per row


def _result(name: str, **values: list[float]) -> RowResult:
    return RowResult(name, {k: values.get(k, [0.5]) for k in METRICS})


def test_verdicts_compare_rows_with_the_full_model_beyond_the_seed_spread():
    results = {
        "UltraGen (full model)": _result("UltraGen (full model)", count_error=[0.1, 0.2], seam_score=[1.0, 1.0]),
        "w/o global": _result("w/o global", count_error=[0.9, 1.1]),  # clearly worse: holds
        "local only": _result("local only", count_error=[0.1, 0.3]),  # overlaps the full model's spread
        "w/o cross-window": _result("w/o cross-window", seam_score=[0.8]),  # better than the full model
    }
    text = "\n".join(verdicts(results))
    assert "w/o global: count error 1.000 vs full model 0.150 — holds" in text
    assert "local only: count error 0.200 vs full model 0.150 — within the seed spread" in text
    assert "w/o cross-window: seam score 0.800 vs full model 1.000 — does not hold" in text
