"""ManiFPT fingerprint core: spaces, manifold, artifacts, workspaces (no UI code here)."""

__version__ = "0.1.0"
