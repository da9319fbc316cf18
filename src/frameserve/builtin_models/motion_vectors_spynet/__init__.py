"""Built-in model folder."""
