"""Evaluation reports, read-only: `GET /reports/{version}/{file}` serves what `digits evaluate --report`
wrote to `<weights_dir>/reports/<version>/`. Nothing here makes a report."""
from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

REPORTS_FOLDER = "reports"
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.(?:html|png)")
# The report is static: no scripts, images from its own folder, inline CSS only.
HEADERS = {"Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

router = APIRouter()


def report_file(weights_dir: Path, version: str, name: str) -> Path | None:
    """The report file `name` of model `version`, or None if the names are not plain or it does not exist."""
    if not VERSION_RE.fullmatch(version) or not FILE_RE.fullmatch(name):
        return None
    folder = Path(weights_dir) / REPORTS_FOLDER / version
    path = folder / name
    try:
        inside = path.resolve().is_relative_to(folder.resolve())  # a symlink must not lead out of the folder
    except OSError:
        return None
    return path if inside and path.is_file() else None


def report_url(weights_dir: Path, version: str) -> str | None:
    """'/reports/<version>/index.html' when that model's report exists, else None."""
    return f"/{REPORTS_FOLDER}/{version}/index.html" if report_file(weights_dir, version, "index.html") else None


@router.get("/reports/{version}/{name:path}", tags=["model"], response_class=FileResponse,
            responses={200: {"content": {"text/html": {}, "image/png": {}}},
                       404: {"description": "no such report file"}})
def get_report_file(version: str, name: str, request: Request) -> FileResponse:
    """A file of a model's evaluation report (index.html, the default, or one of its PNG figures)."""
    path = report_file(request.app.state.settings.weights_dir, version, name or "index.html")
    if path is None:
        raise HTTPException(404, f"no report file {name!r} for model {version!r}; reports are written by "
                                 f"`digits evaluate WEIGHTS --report WEIGHTS_DIR/reports/<version>`")
    return FileResponse(path, headers=HEADERS)
