"""The console faces: xsplice-build, xen-xsplice and the doit command plugins (none imports another)."""
