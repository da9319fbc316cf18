"""Built-in model folder: salient-object cut-out matte (U²-Netp)."""
