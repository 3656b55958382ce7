"""Run summaries. `extractive` needs no network and is always available; it is labelled as
offline in its first line so nobody mistakes it for an AI summary."""

from .extractive import ExtractiveSummarizer

__all__ = ["ExtractiveSummarizer"]
