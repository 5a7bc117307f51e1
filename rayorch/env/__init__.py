"""Pinned environments: the environment spec, worker fingerprints, diffs and the drift guard.

Pure parts (``spec``, ``fingerprint`` values, ``diff``) import neither ray nor mlflow; the
effects (``store``, ``worker``) are reached only from inside Ray workers and the CLI.
"""
