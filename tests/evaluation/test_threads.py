"""Thread-count resolution for the command-line entry points (jetspec/evaluation/threads.py)."""

from __future__ import annotations

import pytest
import torch

from jetspec.evaluation import threads as threads_mod
from jetspec.evaluation.threads import choose_threads


def test_numbers_are_taken_as_given():
    assert choose_threads(3).count == 3
    assert choose_threads("2").count == 2
    assert "as asked" in choose_threads("1").reason


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5", 0])
def test_anything_else_is_refused_naming_the_flag(bad):
    with pytest.raises(ValueError, match="--threads takes a positive number or 'auto'"):
        choose_threads(bad)


def test_auto_keeps_the_fastest_and_favours_one_thread(monkeypatch):
    monkeypatch.setattr(threads_mod, "available_cores", lambda: 2)
    monkeypatch.setattr(threads_mod, "probe_ms", lambda n: {1: 10.0, 2: 6.0}[n])  # idle: 2 threads win
    assert choose_threads("auto").count == 2
    monkeypatch.setattr(threads_mod, "probe_ms", lambda n: {1: 10.0, 2: 25.0}[n])  # busy: 1 thread wins
    choice = choose_threads(None)
    assert choice.count == 1 and "1: 10.0 ms, 2: 25.0 ms" in choice.reason
    monkeypatch.setattr(threads_mod, "probe_ms", lambda n: {1: 10.0, 2: 9.5}[n])  # within 10%: 1 thread
    assert choose_threads("auto").count == 1


def test_the_probe_restores_the_thread_count():
    before = torch.get_num_threads()
    assert threads_mod.probe_ms(1, repeats=1) > 0
    assert torch.get_num_threads() == before


def test_bench_config_validates_threads():
    from jetspec.evaluation.bench import BenchConfig

    assert BenchConfig(threads="auto").threads == "auto"
    with pytest.raises(ValueError, match="--threads"):
        BenchConfig(threads="many")
