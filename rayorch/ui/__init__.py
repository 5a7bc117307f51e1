"""`rayorch ui`: the web app over the ledger (see docs/ui.md).

``app`` holds the routes and templates, ``actions`` the dry-run-first actions, ``cluster`` and
``runs`` the scheduler and MLflow reads, ``charts`` the SVG curves, ``frames`` the notebook
helpers. Display states and the ledger adapter are shared with the CLI in ``rayorch.status``.
"""
