"""agentlog's backend layer: the facade, its ports and adapters. Never imports Textual."""

__version__ = "0.1.0"
