"""The dashboard's pages, its JSON API and its actions: each handler reads or calls one ``App``
method, renders and returns. Everything shown is escaped by the templates; the database URL is
shown without its password; actions exist only with a token (see ``access``)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from backfill.app import App, action
from backfill.boundary import Cause, judge
from backfill.dashboard.access import COOKIE, SESSION_SECONDS, Access
from backfill.dashboard.charts import batch_charts
from backfill.database import display_url
from backfill.errors import BackfillError
from backfill.progress import RunProgress, duration

HERE = Path(__file__).parent
ACTOR = "dashboard"
ACTIONS = ("pause", "resume", "cancel", "retry", "retry-split", "tune")
TUNABLE = ("batch_size", "parallelism", "max_rows_per_second")
CHART_BATCHES = 300
EVENTS_SHOWN = 40

templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


templates.filters["duration"] = duration
templates.filters["action"] = action
templates.filters["shell"] = shlex.quote
templates.filters["urlpart"] = lambda value: quote(str(value), safe="")


def create_app(app: App, access: Access | None = None) -> Starlette:
    access = access or Access.from_env()
    where = display_url(app.store.engine.url)

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        body = templates.get_template(name).render(
            where=where,
            actions=access.actions_enabled,
            logged_in=access.session(request) is not None,
            csrf=access.csrf_token(request),
            notice=request.query_params.get("notice"),
            **context,
        )
        return HTMLResponse(body, status_code=status_code)

    def runs_page(request: Request) -> Response:
        runs = sorted(app.progress(), key=lambda p: (p.run.status.is_over, -p.run.id))
        name = "runs_rows.html" if request.query_params.get("fragment") else "runs.html"
        return page(request, name, runs=runs)

    def run_page(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            details = app.details(name)
        except BackfillError as exc:
            return page(request, "missing.html", status_code=404, message=str(exc))
        run = details.progress.run
        if request.query_params.get("fragment"):
            return page(request, "run_summary.html", p=details.progress)
        recent = app.store.recent_batches(run.id, CHART_BATCHES)
        return page(
            request,
            "run.html",
            p=details.progress,
            details=details,
            charts=batch_charts(recent),
            events=app.store.events_of(run.id, limit=EVENTS_SHOWN),
        )

    def api_runs(request: Request) -> Response:
        return JSONResponse([p.to_json() for p in app.progress()])

    def api_run(request: Request) -> Response:
        try:
            return JSONResponse(app.details(request.path_params["name"]).to_json())
        except BackfillError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)

    def act(name: str, action: str, form: dict[str, Any]) -> str:
        """Do one action as the dashboard; returns what happened, in words."""
        if action == "pause":
            return f"paused: run {app.pause(name, actor=ACTOR).id}"
        if action == "resume":
            return f"resumed: run {app.resume(name, actor=ACTOR).id}"
        if action == "cancel":
            return f"cancelled: run {app.cancel(name, actor=ACTOR).id}"
        if action in ("retry", "retry-split"):
            run, requeued = app.retry(name, split=action == "retry-split", actor=ACTOR)
            return f"{requeued} failed batch(es) re-queued{' in halves' if action == 'retry-split' else ''}"
        settings = {k: _number(k, form.get(k)) for k in TUNABLE if form.get(k) not in (None, "")}
        run = app.tune(name, actor=ACTOR, **settings)
        t = run.tuning
        return f"tuned: batch size {t.batch_size}, parallelism {t.parallelism}, rate cap {t.max_rows_per_second:g}"

    async def form_action(request: Request) -> Response:
        name, action = request.path_params["name"], request.path_params["action"]
        if action not in ACTIONS:
            return page(request, "missing.html", status_code=404, message=f"no action {action!r}")
        form = dict(await request.form())
        if not access.actions_enabled:
            return page(request, "denied.html", status_code=403, message=_READ_ONLY)
        if not access.form_may_act(request, str(form.get("csrf") or "")):
            return page(
                request, "denied.html", status_code=403, message="log in, and act from the dashboard's own forms"
            )
        try:
            notice = act(name, action, form)
        except (BackfillError, ValueError) as exc:
            notice = f"refused: {exc}"
        return RedirectResponse(f"/runs/{quote(name, safe='')}?{urlencode({'notice': notice})}", status_code=303)

    async def api_action(request: Request) -> Response:
        name, action = request.path_params["name"], request.path_params["action"]
        if action not in ACTIONS:
            return JSONResponse({"error": f"no action {action!r}"}, status_code=404)
        if not access.actions_enabled:
            return JSONResponse({"error": _READ_ONLY}, status_code=403)
        if not access.bearer_may_act(request):
            return JSONResponse({"error": "send the dashboard token: Authorization: Bearer TOKEN"}, status_code=401)
        body = await request.body()
        try:
            form = json.loads(body) if body else {}
            return JSONResponse({"done": act(name, action, form if isinstance(form, dict) else {})})
        except (BackfillError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)

    def login_form(request: Request) -> Response:
        if not access.actions_enabled:
            return page(request, "denied.html", status_code=403, message=_READ_ONLY)
        return page(request, "login.html", failed=False)

    async def login(request: Request) -> Response:
        if not access.actions_enabled:
            return page(request, "denied.html", status_code=403, message=_READ_ONLY)
        form = await request.form()
        if not access.token_matches(str(form.get("token") or "")):
            return page(request, "login.html", status_code=401, failed=True)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            access.new_session(),
            httponly=True,
            samesite="strict",
            max_age=SESSION_SECONDS,
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    def logout(request: Request) -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    def unavailable(request: Request, exc: Exception) -> Response:
        """The database away, a permission missing, a timeout, the checkpoint tables dropped: a
        page (or JSON) saying so, and the dashboard stays up. A bug is re-raised: 500, and its
        traceback in the server's log."""
        verdict = judge(exc)
        if verdict.cause is Cause.BUG:
            raise exc
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": verdict.message}, status_code=503)
        return page(
            request, "unavailable.html", status_code=503, title="The database cannot answer", message=verdict.message
        )

    return Starlette(
        exception_handlers={DBAPIError: unavailable, OSError: unavailable, BackfillError: unavailable},
        routes=[
            Route("/", runs_page),
            Route("/runs/{name}", run_page),
            Route("/runs/{name}/{action}", form_action, methods=["POST"]),
            Route("/api/runs", api_runs),
            Route("/api/runs/{name}", api_run),
            Route("/api/runs/{name}/{action}", api_action, methods=["POST"]),
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
    )


_READ_ONLY = "this dashboard is read-only: start it with BACKFILL_DASHBOARD_TOKEN set to allow actions"


def _number(name: str, raw: Any) -> float | int:
    text = str(raw).strip()
    try:
        return float(text) if name == "max_rows_per_second" else int(text)
    except ValueError:
        raise ValueError(f"{name.replace('_', ' ')} must be a number, got {text!r}") from None


def serve(app: App, host: str, port: int) -> None:
    """Serve until interrupted (uvicorn)."""
    import uvicorn

    uvicorn.run(create_app(app), host=host, port=port, log_level="warning")


__all__ = ["RunProgress", "create_app", "serve"]
