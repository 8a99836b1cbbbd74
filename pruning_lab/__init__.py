"""pruning_lab: prune LLMs block by block and study what reconstruction does to them."""

__version__ = "0.1.0"
