"""Releases: out/release/ and its manifest, the audit, the payload store, the Dask cluster."""
