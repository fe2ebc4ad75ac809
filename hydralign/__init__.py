"""hydralign: composable Hydra configs feeding a Lightning module for LLM post-training experiments."""

__version__ = "0.1.0"
