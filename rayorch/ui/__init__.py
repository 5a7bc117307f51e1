"""`rayorch ui`: the web app over the ledger (see docs/ui.md).

``model`` (pure display states and the partition grid) and ``reader`` (the one adapter over
the ledger) are shared with the CLI views and notebooks; ``app`` holds the routes, ``actions``
the dry-run-first actions, ``cluster`` and ``runs`` the scheduler and MLflow reads.
"""
