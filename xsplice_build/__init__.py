"""xsplice-build: from a security patch to a signed Xen live-patch payload."""

__version__ = "0.1.0"
