"""A built payload against its base image: Xen's loader rules offline, a running base image (minixen)."""
