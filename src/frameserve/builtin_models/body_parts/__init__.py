"""Built-in model folder: body parts (BodyPix 2)."""
