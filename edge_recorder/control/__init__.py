"""The control plane: how an SFU drives the recorder.

``protocol`` is the JSON-RPC 2.0 schema, pure and imported by everything that
speaks it; the Trio WebSocket server and dial-out client live beside it. The
wire format's authority is ``docs/control-protocol.md``.
"""
