"""Talking to a running hypervisor: the request channel, probes, Debian's Xen in QEMU and its initramfs.

Below the stages: the prove stage and the commands (xen-xsplice, the nightly) both drive it.
"""
