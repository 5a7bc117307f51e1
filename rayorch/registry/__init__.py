"""Model registry promotions: pure decisions, a write-ahead audit log, one named actor."""

from rayorch.registry.decisions import (
    PromotionDecision,
    PromotionOutcome,
    PromotionRequest,
    VerifyResult,
    VerifyStatus,
    VersionFacts,
    decide_promotion,
    evaluate_gates,
)

__all__ = [
    "PromotionDecision",
    "PromotionOutcome",
    "PromotionRequest",
    "VerifyResult",
    "VerifyStatus",
    "VersionFacts",
    "decide_promotion",
    "evaluate_gates",
]
