"""Failure patterns: a streaming template miner with variable masking (see miner.py)."""

from backend.patterns.masking import MASK, mask, tokenize
from backend.patterns.miner import Cluster, MinerConfig, TemplateMiner, mine

__all__ = ["MASK", "Cluster", "MinerConfig", "TemplateMiner", "mask", "mine", "tokenize"]
