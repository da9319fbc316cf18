"""Built-in model folder: artist-led roto with Segment Anything."""
