"""Read-only registry questions that need no actor: the audit history and deployed drift."""

from __future__ import annotations

from rayorch.registry.audit import AuditLog, PromotionRecord
from rayorch.registry.decisions import VerifyResult, compare_deployed
from rayorch.registry.mlflow_view import RegistryView
from rayorch.settings import Settings, load_settings


def history(
    model: str,
    alias: str | None = None,
    limit: int | None = None,
    settings: Settings | None = None,
) -> list[PromotionRecord]:
    """Every promotion attempt of ``model`` (optionally one alias), oldest first."""
    s = settings or load_settings()
    log = AuditLog(s.db_url)
    try:
        return log.history(s.mlflow_uri, model, alias, limit)
    finally:
        log.close()


def verify_deployed(
    model: str, alias: str, deployed: str, settings: Settings | None = None
) -> VerifyResult:
    """Is ``deployed`` (a sha256, a model directory or an artifact URI) what ``alias`` names?"""
    s = settings or load_settings()
    view = RegistryView(s.mlflow_uri)
    deployed_digests = view.deployed_digests(deployed)
    alias_version = view.current(model, alias)
    expected = view.facts(model, alias_version).artifact_digest if alias_version else None
    return compare_deployed(
        model, alias, alias_version, expected, deployed_digests, view.version_digests(model)
    )
