"""The registry as rayorch sees it: a narrow interface over MLflow's model registry.

Only this module (with ``mlflow_rest``) and ``lineage.tracking`` talk to MLflow for the
registry, and only through MLflow's public APIs: ``MlflowClient``, and for the alias read and
write against a tracking server (``http://…``) the documented REST endpoint, one call each on a
kept-alive session (``mlflow_rest``: ``MlflowClient`` costs three round trips and ~17 ms of
client CPU a move there). It reads the facts a promotion decision needs and sets an alias; it
decides nothing. The compare-and-set is not here: MLflow has no conditional alias
write, so it is rayorch's own row (``alias_rows``), claimed before the alias is set.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile

from rayorch.errors import InfrastructureError
from rayorch.lineage.tracking import directory_digest
from rayorch.registry.decisions import VersionFacts

TAG_ARTIFACT_DIGEST = "rayorch.artifact_digest"
TRAINING_CONTEXT = "training"
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_REGISTERED_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))/?$")
_PULL_MARKER = "registered_model_meta"
_LOGGED_MODEL_MARKER = "model_name: null\nmodel_version: null\n"
_NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}


def _missing(e: Exception) -> bool:
    return getattr(e, "error_code", None) in _NOT_FOUND


class RegistryView:
    def __init__(self, tracking_uri: str) -> None:
        from rayorch.lineage.tracking import mlflow_client
        from rayorch.registry.mlflow_rest import alias_rest_for

        self.uri = tracking_uri
        self.client = mlflow_client(tracking_uri, registry=True)
        # A tracking server: the alias read and write are one REST call each on a kept-alive
        # session (see ``mlflow_rest``); a local store: MlflowClient.
        self.rest = alias_rest_for(tracking_uri)
        # Facts of a READY version whose run has ended do not change: a version's source, run,
        # metrics and dataset inputs are immutable once the run ends, and rayorch tags the
        # artifact digest before it ends the run. Caching them keeps a promotion to one alias
        # read and one alias write. What can still change, the version being deleted, is
        # re-checked by the alias write itself (and evicts the entry). The cache is derived
        # from MLflow and rebuilt on restart. The alias itself is never cached.
        self._facts: dict[tuple[str, str], VersionFacts] = {}

    def current(self, model: str, alias: str) -> str | None:
        """The version ``alias`` names now, or None when unset (or the model is unknown).

        Always read from MLflow, never cached: the decision is against the real alias.
        """
        try:
            if self.rest is not None:
                return self.rest.get(model, alias)
            return str(self.client.get_model_version_by_alias(model, alias).version)
        except Exception as e:
            if _missing(e):
                return None
            raise self._infra("read aliases of", model, e) from e

    def facts(self, model: str, version: str) -> VersionFacts:
        cached = self._facts.get((model, version))
        if cached is not None:
            return cached
        facts, final = self._read_facts(model, version)
        if final:
            self._facts[(model, version)] = facts
        return facts

    def _read_facts(self, model: str, version: str) -> tuple[VersionFacts, bool]:
        try:
            mv = self.client.get_model_version(model, version)
        except Exception as e:
            if _missing(e):
                return VersionFacts.missing(), False
            raise self._infra("read version of", model, e) from e
        metrics: dict[str, float] = {}
        has_training = False
        run_ended = False
        if mv.run_id:
            try:
                run = self.client.get_run(mv.run_id)
            except Exception as e:
                if not _missing(e):
                    raise self._infra("read the run of", model, e) from e
            else:
                run_ended = run.info.status in ("FINISHED", "FAILED", "KILLED")
                metrics = {k: float(v) for k, v in run.data.metrics.items()}
                for di in run.inputs.dataset_inputs if run.inputs else []:
                    ctx = {t.key: t.value for t in di.tags}.get("mlflow.data.context")
                    if ctx == TRAINING_CONTEXT:
                        has_training = True
        facts = VersionFacts(
            exists=True,
            status=str(mv.status),
            run_id=mv.run_id,
            metrics=metrics,
            has_training_dataset=has_training,
            artifact_digest=(mv.tags or {}).get(TAG_ARTIFACT_DIGEST),
        )
        return facts, facts.status == "READY" and run_ended

    def set_alias(self, model: str, alias: str, version: str) -> None:
        """Point ``alias`` at ``version`` (MLflow's public, unconditional call)."""
        try:
            if self.rest is not None:
                self.rest.set(model, alias, version)
            else:
                self.client.set_registered_model_alias(model, alias, version)
        except Exception as e:
            self._facts.pop((model, version), None)  # e.g. deleted meanwhile: re-read it
            raise self._infra("set an alias of", model, e) from e

    def close(self) -> None:
        if self.rest is not None:
            self.rest.close()

    def version_digests(self, model: str) -> dict[str, str]:
        """version -> recorded artifact digest, for every version that has one."""
        try:
            versions = self.client.search_model_versions(f"name = '{model}'")
        except Exception as e:
            raise self._infra("list versions of", model, e) from e
        return {
            str(v.version): v.tags[TAG_ARTIFACT_DIGEST]
            for v in versions
            if (v.tags or {}).get(TAG_ARTIFACT_DIGEST)
        }

    def deployed_digests(self, deployed: str) -> tuple[str, ...]:
        """Digests of what is deployed: a sha256 as given, or of a directory or artifact URI.

        ``models:/NAME/VERSION`` and ``models:/NAME@ALIAS`` are resolved to the version's
        source first. A directory is digested as ``Tracker.artifact_digest`` digests it, in
        each form MLflow's download marker can take (see ``_model_dir_digests``).
        """
        text = deployed.strip()
        if _DIGEST_RE.match(text.lower()):
            return (text.lower(),)
        if os.path.isdir(text):
            return _model_dir_digests(text)
        import mlflow.artifacts

        try:
            source = self._resolve_registered(text)
            with tempfile.TemporaryDirectory() as tmp:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=tmp, tracking_uri=self.uri
                )
                return _model_dir_digests(local)
        except Exception as e:
            raise InfrastructureError(
                f"cannot read the deployed artifact {deployed!r}: {e}. Pass a sha256 digest, "
                "a local model directory, or an MLflow artifact URI (models:/NAME/VERSION).",
                deployed=deployed,
            ) from e

    def _resolve_registered(self, uri: str) -> str:
        m = _REGISTERED_RE.match(uri)
        if m is None:
            return uri
        name, version, alias = m.group("name"), m.group("version"), m.group("alias")
        if alias is not None:
            return str(self.client.get_model_version_by_alias(name, alias).source)
        return str(self.client.get_model_version(name, version).source)

    def _infra(self, what: str, model: str, e: Exception) -> InfrastructureError:
        return InfrastructureError(
            f"cannot {what} model {model!r} in MLflow at {self.uri}: {e}. "
            "Check MLFLOW_TRACKING_URI.",
            model=model,
            tracking_uri=self.uri,
        )


def _model_dir_digests(root: str) -> tuple[str, ...]:
    """The model digest of a directory, then its earlier form (for versions tagged before).

    ``directory_digest`` leaves out MLflow's download marker ``registered_model_meta`` (see
    there), so a copy pulled as ``models:/NAME/V``, as a logged model, as ``runs:/…`` or taken
    straight from the artifact store all digest alike, and alike to what registration tagged.
    Versions registered before that rule tagged the digest *with* the marker in its
    logged-model form (registration downloads the logged model); that form is computed too.
    """
    return tuple(dict.fromkeys([directory_digest(root), _legacy_digest(root)]))


def _legacy_digest(root: str) -> str:
    """The digest with the logged-model marker in place of whatever marker there is."""
    h = hashlib.sha256()

    def marker() -> None:
        h.update(_PULL_MARKER.encode() + b"\0" + _LOGGED_MODEL_MARKER.encode())

    for dirpath, _, files in sorted(os.walk(root)):
        names = sorted({*files, _PULL_MARKER} if dirpath == root else files)
        for name in names:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if rel == _PULL_MARKER:
                marker()
                continue
            h.update(rel.encode() + b"\0")
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()
