"""The roofline report: floors from hand-made numbers, the node-cost fit, the report on a tiny target."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from jetspec.core.target import TargetModel
from jetspec.evaluation import roofline
from jetspec.evaluation.roofline import Ceilings, RooflineConfig, floor_ms, node_cost, roofline_markdown, run_roofline
from jetspec.kernels import onednn_available
from jetspec.kernels.packed_linear import skinny_available


def test_floor_is_the_larger_of_traffic_and_arithmetic():
    ceilings = Ceilings(bandwidth_gbs={"sum": 10.0, "other": 4.0}, sgemm_gflops={"torch": 50.0, "onednn": 100.0})
    w = [torch.zeros(1000, 1000)]  # 4 MB of fp32, 1e6 weights
    assert floor_ms(w, 1, ceilings) == pytest.approx(0.4)  # 4e6 B / 10 GB/s; 2e6 FLOP at 100 GFLOP/s is 0.02
    assert floor_ms(w, 1000, ceilings) == pytest.approx(20.0)  # 2e9 FLOP / 100 GFLOP/s beats 0.4 ms


def test_node_cost_fit():
    assert node_cost({1: 10.0, 5: 12.0, 9: 14.0}) == pytest.approx(0.05)  # (x1.2 - 1) / 4 = (x1.4 - 1) / 8
    assert node_cost({1: 10.0, 3: 10.0}) == 0.0


def test_config_errors_name_the_field_and_the_flag():
    from jetspec.cli import build_parser
    from jetspec.commands.flags import config_from_args

    with pytest.raises(ValueError, match="^rows: must be >= 1"):
        RooflineConfig(rows=(0, 1))
    with pytest.raises(ValueError, match="^rows: must start with 1"):
        RooflineConfig(rows=(4, 17), split_rows=(4,))
    # The engines are TargetModel's (jetspec.core.target.ENGINES), not a list copied here.
    with pytest.raises(ValueError, match="^engines: unknown engine 'compiled'; registered: fast, hf"):
        RooflineConfig(engines=("fast", "compiled"))
    assert RooflineConfig(rows=(1, 5), split_rows=(5,)).rows == (1, 5)
    args = build_parser("roofline").parse_args(["roofline", "--rows", "1, 5", "--split-rows", "5"])
    assert config_from_args(RooflineConfig, args).rows == (1, 5)  # the command line's comma list
    args = build_parser("roofline").parse_args(["roofline", "--rows", "4,17"])
    with pytest.raises(ValueError, match="^--rows: must start with 1"):
        config_from_args(RooflineConfig, args)


def test_report_on_a_tiny_target(monkeypatch):
    monkeypatch.setattr(roofline, "measure_ceilings", lambda: Ceilings({"sum": 20.0}, {"torch": 50.0}))
    # vocab 96: the lm_head [96, 32] must not share a shape with the fused q/k/v [64, 32], since the
    # split tells products apart by weight shape.
    model = tiny_model("llama", seed=0, dtype=torch.float32, vocab=96)
    cfg = RooflineConfig(rows=(1, 5), split_rows=(5,), prefix=8, repeats=1, competing=False)
    result = run_roofline(cfg, model)
    chosen = TargetModel(model).linear_backend  # what "fast" runs; the other backends are the levers
    runnable = {"skinny": skinny_available(torch.float32, "cpu"), "onednn": onednn_available(torch.float32, "cpu"),
                "torch": True}
    levers = {f"fast, {b} products" for b, ok in runnable.items() if ok and b != chosen}
    assert set(result["forwards"]) == {"fast", "hf"} | levers
    assert all(ms > 0 for by_rows in result["forwards"].values() for ms in by_rows.values())
    split = result["splits"]["fast"][5]
    assert set(split) == set(roofline.COMPONENTS) and split["mlp"] > 0 and split["lm_head"] > 0
    text = roofline_markdown(result, cfg)
    assert "| fast |" in text and "| hf |" in text and "roofline floor" in text and "c = " in text
