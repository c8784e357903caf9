"""Verifiers: decide which drafted path the target accepts (greedy, or lossless sampling)."""

from jetspec.verifiers.greedy import GreedyVerifier, greedy_accept
from jetspec.verifiers.sampling import SamplingVerifier, recursive_rejection, sample_and_match

__all__ = ["GreedyVerifier", "SamplingVerifier", "greedy_accept", "recursive_rejection", "sample_and_match"]
