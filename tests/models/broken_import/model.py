"""A model folder whose import fails: the server must list the error and keep serving."""

raise RuntimeError("this plug-in is broken on purpose")
