"""run: the harness path on the GPU: one mode judged, cases in isolation, sweeps, diagnose, bench, sanitize."""
