"""Chaos scenarios: faults injected into real pipeline processes, ending with exact checks."""
