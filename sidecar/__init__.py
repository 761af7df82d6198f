"""cert-sidecar: keeps HAProxy serving valid certificates from an ACME CA."""

__version__ = "0.1.0"
