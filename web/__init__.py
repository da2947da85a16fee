"""The HTTP and websocket face of the booth (Quart-Trio, served by Hypercorn's trio worker)."""
