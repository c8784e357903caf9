"""Tree builders: turn a drafter's proposal into a flat draft tree under a node budget."""

from jetspec.trees.best_first import capped_fanout, grow_tree
from jetspec.trees.builders import BestFirstBuilder, ChainBuilder, FanoutCapBuilder

__all__ = ["BestFirstBuilder", "ChainBuilder", "FanoutCapBuilder", "capped_fanout", "grow_tree"]
