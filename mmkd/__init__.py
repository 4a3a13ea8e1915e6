"""mmkd — multi-level multilingual knowledge distillation with a precomputed teacher cache."""

__version__ = "0.1.0"
