"""Tree builders: turn a drafter's proposal into a flat draft tree under a node budget."""

from jetspec.trees.best_first import capped_fanout, grow_tree
from jetspec.trees.builders import BestFirstBuilder, ChainBuilder, FanoutCapBuilder, make_tree_builder
from jetspec.trees.scoring import EntropyBuilder, HybridBuilder, entropy_fanout

__all__ = ["BestFirstBuilder", "ChainBuilder", "EntropyBuilder", "FanoutCapBuilder", "HybridBuilder", "capped_fanout",
           "entropy_fanout", "grow_tree", "make_tree_builder"]
