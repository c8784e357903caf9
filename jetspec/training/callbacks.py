"""Lightning callbacks for long head-training runs: tokens seen, wall time and the tau curve.

``TauCurve`` answers the question a training curve of the loss cannot: how many tokens per round
would this head accept *now*? Every ``every_n_steps`` optimizer steps it replays held-out
references (prompts + the target's greedy answers, ``jetspec.core.replay``) with the head being trained
and logs the exact greedy tau at each budget, next to the tokens the head has been trained on and
the wall time. Rows are logged to the trainer's logger and appended to a JSON-lines file, which
survives ``--resume`` (the file is appended to, the counters are saved in the checkpoint).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import lightning as L

from jetspec.core.jsonl import jsonl_line, read_jsonl
from jetspec.core.replay import Reference, as_references, reference_taps, replay

log = logging.getLogger(__name__)


class TauCurve(L.Callback):
    """Replay tau during training (see module docstring).

    Args:
        references: held-out ``Reference`` rows (or dicts with ``input_ids``, ``response_start``).
        budgets: tree budgets to replay at (best-first trees of ``width`` x ``depth``).
        every_n_steps: evaluate every N optimizer steps (and once when training ends).
        out_file: JSON-lines file for the curve (appended); None = logger only.
        max_new_tokens: replay only the first N tokens of each answer (cheaper curves).
        final_budgets: budgets of the evaluation when training ends (default: ``budgets``).
    """

    def __init__(self, references: Sequence[Reference | dict], budgets: Sequence[int] = (16,),
                 every_n_steps: int = 100, width: int = 4, depth: Optional[int] = None,
                 out_file: Optional[str] = None, max_new_tokens: Optional[int] = None,
                 final_budgets: Optional[Sequence[int]] = None) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if not budgets or min(budgets) < 1:
            raise ValueError(f"budgets must be positive, got {budgets}")
        self.references = as_references(references)
        if not self.references:
            raise ValueError("TauCurve needs at least one reference")
        self.budgets, self.every, self.width, self.depth = tuple(budgets), every_n_steps, width, depth
        self.final_budgets = tuple(final_budgets) if final_budgets else self.budgets
        self.out_file = Path(out_file) if out_file else None
        self.max_new_tokens = max_new_tokens
        self.tokens_seen = 0  # real (unpadded) tokens of the batches trained on, all processes
        self.wall_seconds = 0.0  # training wall time without these evaluations, summed over resumed runs
        self._eval_seconds = 0.0
        self.history: list[dict] = []  # every row evaluated in this process
        self._taps = None
        self._t0: Optional[float] = None
        self._last_step = -1

    # -------------------------------------------------------------- bookkeeping
    def state_dict(self) -> dict:
        return {"tokens_seen": self.tokens_seen, "wall_seconds": self._wall(), "last_step": self._last_step}

    def load_state_dict(self, state: dict) -> None:
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.wall_seconds = float(state.get("wall_seconds", 0.0))
        self._last_step = int(state.get("last_step", -1))  # a resumed run does not log a step twice

    def _wall(self) -> float:
        if self._t0 is None:
            return self.wall_seconds
        return self.wall_seconds + time.perf_counter() - self._t0 - self._eval_seconds

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0, self._eval_seconds = time.perf_counter(), 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.tokens_seen += int(batch["lengths"].sum()) * trainer.world_size
        step = trainer.global_step
        if step % self.every == 0 and step != self._last_step:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last_step or self.final_budgets != self.budgets:
            self.evaluate(trainer, pl_module, self.final_budgets)

    # -------------------------------------------------------------- the evaluation
    def evaluate(self, trainer, pl_module, budgets: Optional[Sequence[int]] = None) -> dict:
        """Replay the references at every budget; log and append one row."""
        from jetspec.trees import BestFirstBuilder

        self._last_step = trainer.global_step
        if not trainer.is_global_zero:
            return {}
        model = pl_module.target_model
        if self._taps is None and pl_module.tap_layers:
            self._taps = reference_taps(model, pl_module.tap_layers, self.references)
        depth = min(self.depth or pl_module.max_depth, pl_module.max_depth)
        was_training = pl_module.training
        pl_module.eval()
        budgets = tuple(budgets or self.budgets)
        row = {"step": trainer.global_step, "tokens_seen": self.tokens_seen, "wall_s": round(self._wall(), 1)}
        t0 = time.perf_counter()
        try:
            for b in budgets:
                report = replay(pl_module, BestFirstBuilder(budget=b, width=self.width, depth=depth),
                                self.references, taps=self._taps, max_new_tokens=self.max_new_tokens)
                row[f"tau_b{b}"] = round(report.pooled_tau(), 4)
                row[f"taus_b{b}"] = [round(t, 4) for t in report.taus()]  # per reference, for intervals
                for s in sorted(set(report.sets)):
                    row[f"tau_b{b}_{s}"] = round(report.pooled_tau(s), 4)
        finally:
            pl_module.train(was_training)
            if hasattr(pl_module, "reset_cache"):
                pl_module.reset_cache()
        row["eval_s"] = round(time.perf_counter() - t0, 1)
        self._eval_seconds += time.perf_counter() - t0
        self.history.append(row)
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"replay/{k}": v for k, v in row.items()
                                        if isinstance(v, (int, float)) and k != "step"}, step=trainer.global_step)
        if self.out_file is not None:
            self.out_file.parent.mkdir(parents=True, exist_ok=True)
            with self.out_file.open("a") as f:
                f.write(jsonl_line(row))
        shown = ["step", "tokens_seen", "wall_s"] + [f"tau_b{b}" for b in budgets] + ["eval_s"]
        log.info("tau curve: %s", ", ".join(f"{k}={row[k]}" for k in shown))
        return row


def load_curve(path: str | Path) -> list[dict]:
    """The rows a ``TauCurve`` appended to ``path``."""
    return list(read_jsonl(path))

