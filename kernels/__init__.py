"""Kernel sources, loaded at run time by harness.compiler (package only so installs carry them)."""
