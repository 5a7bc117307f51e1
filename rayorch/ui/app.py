"""The web app (FastAPI): server-rendered pages and the JSON API they use, over ReadModel.

Thin: every route reads through :class:`~rayorch.status.reader.ReadModel` (or the scheduler's
status API for the cluster page) and renders a template; actions are planned by
:mod:`rayorch.ui.actions`, shown as a dry run, and run only after a POST carrying the page's
CSRF token, and only when the app was created with ``allow_actions``.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from rayorch.errors import ConflictError, NotFoundError, RayorchError
from rayorch.ledger.store import Ledger
from rayorch.settings import Settings, load_settings
from rayorch.status.model import CELL_ORDER, CellState, build_grid, fmt_duration, fmt_ts
from rayorch.status.reader import ReadModel, VersionsFn
from rayorch.ui import actions as act
from rayorch.ui.charts import line_chart

HERE = Path(__file__).parent


@dataclass
class UIConfig:
    """What one UI server was started with (``rayorch ui`` options)."""

    settings: Settings
    allow_actions: bool = False
    configs: dict[str, str] = field(default_factory=dict)  # pipeline name -> config path
    mlflow_url: str | None = None  # an MLflow UI to link runs to
    ray_address: str | None = None  # for the cluster page
    refresh_s: float = 3.0
    #: The scheduler's status report (read-only); default: ``rayorch.ui.cluster.read_cluster``.
    cluster_status: Callable[[str | None], dict[str, Any]] | None = None


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        fmt_ts=fmt_ts, fmt_duration=fmt_duration, CELL_ORDER=CELL_ORDER, CellState=CellState
    )
    return env


def create_app(config: UIConfig | None = None) -> FastAPI:
    cfg = config or UIConfig(load_settings())
    ledger = Ledger(cfg.settings.db_url)
    model = ReadModel(ledger, versions=_versions_provider(cfg))
    csrf = secrets.token_urlsafe(32)
    tpl = _templates()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        ledger.close()

    app = FastAPI(title="rayorch", docs_url="/api/docs", redoc_url=None, lifespan=lifespan)
    app.state.ui = cfg
    app.state.ledger = ledger
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def page(name: str, request: Request, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = tpl.get_template(name).render(
            request=request,
            allow_actions=cfg.allow_actions,
            csrf=csrf,
            refresh_s=cfg.refresh_s,
            now=time.time(),
            **ctx,
        )
        return HTMLResponse(html, status_code=status)

    @app.exception_handler(RayorchError)
    def _errors(request: Request, exc: RayorchError) -> Response:
        status = (
            404
            if isinstance(exc, NotFoundError)
            else 409
            if isinstance(exc, ConflictError)
            else 500
        )
        if request.url.path.startswith("/api/"):
            return JSONResponse(exc.to_dict(), status_code=status)
        return page("error.html", request, status, message=exc.message)

    # -- JSON API --------------------------------------------------------------------------
    @app.get("/api/backfills")
    def api_backfills(pipeline: str | None = None, limit: int = 50) -> dict[str, Any]:
        return {"backfills": [b.to_dict() for b in model.list_backfills(pipeline, limit)]}

    @app.get("/api/backfills/{backfill_id}")
    def api_backfill(backfill_id: str, compact: bool = False) -> Response:
        d = model.backfill(backfill_id)
        if compact:  # what the page polls: [run_key, state] pairs, in plan order
            body = {
                "backfill": d.backfill.to_dict(),
                "states": [[u.run_key, u.state.value] for u in d.units],
            }
        else:
            body = d.to_dict()
        return JSONResponse(body)

    @app.get("/api/units/{run_key:path}")
    def api_unit(run_key: str, backfill: str | None = None) -> dict[str, Any]:
        return model.unit(run_key, backfill).to_dict()

    def cluster_report() -> dict[str, Any]:
        if cfg.cluster_status is not None:
            return cfg.cluster_status(cfg.ray_address)
        from rayorch.ui.cluster import read_cluster

        return read_cluster(cfg.ray_address)

    @app.get("/api/cluster")
    def api_cluster() -> dict[str, Any]:
        return cluster_report()

    # -- pages -----------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/backfills", status_code=303)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> RedirectResponse:
        return RedirectResponse("/static/favicon.svg", status_code=301)

    @app.get("/backfills", response_class=HTMLResponse, include_in_schema=False)
    def backfills_page(request: Request, pipeline: str | None = None) -> HTMLResponse:
        bfs = model.list_backfills(pipeline)
        return page("backfills.html", request, backfills=bfs, active=any(b.active for b in bfs))

    @app.get("/backfills/{backfill_id}", response_class=HTMLResponse, include_in_schema=False)
    def backfill_page(
        request: Request, backfill_id: str, step: str | None = None, filter: str | None = None
    ) -> HTMLResponse:
        d = model.backfill(backfill_id)
        current = step if step in d.steps else (d.steps[0] if d.steps else "")
        attention = [
            u
            for u in d.units
            if u.state
            in (
                CellState.FAILED,
                CellState.HELD,
                CellState.STALE,
                CellState.WAITING,
                CellState.BLOCKED,
            )
            and (filter is None or u.state.name.lower() == filter)
        ]
        return page(
            "backfill.html",
            request,
            d=d,
            bf=d.backfill,
            step=current,
            grid=build_grid(d.units, current),
            units=d.units,
            attention=attention[:200],
            attention_total=len(attention),
            filter=filter,
        )

    @app.get("/units/{run_key:path}", response_class=HTMLResponse, include_in_schema=False)
    def unit_page(
        request: Request, run_key: str, backfill: str | None = None, fragment: bool = False
    ) -> HTMLResponse:
        u = model.unit(run_key, backfill)
        link = None
        if u.unit.mlflow_run_id and cfg.mlflow_url:
            from rayorch.ui.runs import run_link

            link = run_link(cfg.mlflow_url, None, u.unit.mlflow_run_id)
        name = "unit_panel.html" if fragment else "unit.html"
        return page(name, request, u=u, mlflow_link=link, backfill_id=backfill)

    @app.get("/runs/{run_id}/curves.svg", include_in_schema=False)
    def curves_svg(run_id: str) -> Response:
        from rayorch.ui.runs import read_run, split_curves

        curves = read_run(cfg.settings.mlflow_uri, run_id)
        charts = split_curves(curves.metrics) or [("metrics", {})]
        w, h = 560, 240
        svgs = [line_chart(series, title=name, width=w, height=h) for name, series in charts]
        body = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h * len(svgs)}">'
            + "".join(f'<g transform="translate(0,{i * h})">{s}</g>' for i, s in enumerate(svgs))
            + "</svg>"
        )
        return Response(body, media_type="image/svg+xml")

    @app.get("/cluster", response_class=HTMLResponse, include_in_schema=False)
    def cluster_page(request: Request) -> HTMLResponse:
        from rayorch.ui.cluster import slot_rows

        report = cluster_report()
        return page("cluster.html", request, r=report, nodes=slot_rows(report))

    # -- actions: dry run (GET) then confirm (POST with the CSRF token) --------------------
    def plan_for(kind: str, backfill_id: str, selected: list[str]) -> act.ActionPlan:
        if not cfg.allow_actions:
            raise ConflictError(
                "actions are off: start the UI with `rayorch ui --allow-actions`",
                field="--allow-actions",
            )
        d = model.backfill(backfill_id)
        config = cfg.configs.get(d.backfill.pipeline)
        if kind == act.ActionKind.CANCEL.value:
            return act.plan_cancel(d)
        if kind == act.ActionKind.RETRY.value:
            return act.plan_retry(d, config)
        if kind == act.ActionKind.REPROCESS.value:
            draft = act.plan_reprocess(d, selected, config)
            return act.plan_reprocess(d, selected, config, _planned_keys(draft, config))
        raise NotFoundError(f"no action {kind!r}; choose cancel, retry or reprocess", action=kind)

    @app.get(
        "/backfills/{backfill_id}/actions/{kind}",
        response_class=HTMLResponse,
        include_in_schema=False,
    )
    def action_preview(request: Request, backfill_id: str, kind: str) -> HTMLResponse:
        selected = request.query_params.getlist("unit")
        plan = plan_for(kind, backfill_id, selected)
        return page("action.html", request, plan=plan, selected=selected)

    @app.post("/backfills/{backfill_id}/actions/{kind}", include_in_schema=False)
    async def action_run(request: Request, backfill_id: str, kind: str) -> Response:
        form = parse_qs((await request.body()).decode())
        token = (form.get("csrf") or [""])[0]
        if not hmac.compare_digest(token, csrf):
            return page(
                "error.html",
                request,
                403,
                message="missing or wrong CSRF token: reload the page and try again",
            )
        selected = form.get("unit", [])
        plan = await run_in_threadpool(plan_for, kind, backfill_id, selected)
        log_dir = cfg.settings.home / "ui-actions"
        result = await run_in_threadpool(act.execute, plan, ledger, log_dir)
        return page("action_done.html", request, plan=plan, result=result)

    return app


def _versions_provider(cfg: UIConfig, ttl_s: float = 30.0) -> VersionsFn:
    """Current step versions of the pipelines whose config the UI knows (for "stale"),
    recomputed at most every ``ttl_s`` (hashing entrypoint sources is not free)."""
    cache: dict[str, tuple[float, Any]] = {}

    def get(pipeline: str) -> Any:
        path = cfg.configs.get(pipeline)
        if path is None:
            return None
        hit = cache.get(pipeline)
        if hit is not None and time.monotonic() - hit[0] < ttl_s:
            return hit[1]
        from rayorch.api import current_versions
        from rayorch.spec import load_pipeline

        try:
            versions: Any = current_versions(load_pipeline(path), cfg.settings)
        except RayorchError:
            versions = None  # a config that no longer loads: nothing is called stale
        cache[pipeline] = (time.monotonic(), versions)
        return versions

    return get


def _planned_keys(draft: act.ActionPlan, config: str | None) -> list[str]:
    """Run keys the reprocess command would plan (pure planner on its own arguments)."""
    if not config or not draft.command:
        return []
    from rayorch.backfill.plan import plan_backfill
    from rayorch.partitions import parse_key_selection
    from rayorch.spec import load_pipeline

    args = dict(zip(draft.command[3::2], draft.command[4::2], strict=False))
    plan = plan_backfill(
        load_pipeline(config),
        args["--start"],
        args["--end"],
        parse_key_selection(args.get("--keys")) or None,
        args.get("--steps"),
    )
    return [u.run_key for u in plan.units]
