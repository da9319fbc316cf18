"""The MLClient front door: the protocol of Foundry's compiled MLClient node for Nuke.

Framing, a zero-copy protobuf codec for frames, and the TCP server; ``docs/mlclient-protocol.md``.
"""
