"""What a backfill looks like to people: display states, the partition grid, and the one
read adapter over the ledger. Shared by `rayorch status`/`plan` (rayorch/cli/views.py), the web
UI (rayorch/ui/) and the notebooks (rayorch/ui/frames.py), so they agree on every state."""
