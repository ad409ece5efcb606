"""The web page's server side (fast tier): served without a key, strict CSP, no CORS opened."""

from collections.abc import Callable

from fastapi.testclient import TestClient


def test_page_is_public_and_locked_down(make_client: Callable[..., TestClient]) -> None:
    client = make_client(API_KEYS="k1")
    page = client.get("/", headers={"Origin": "https://evil.example"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js"' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert "access-control-allow-origin" not in page.headers
    for script in ("busy.js", "app.js", "jobs.js", "draw.js"):  # no build step: each file as written
        assert f'<script src="/static/{script}" defer>' in page.text
        assert client.get(f"/static/{script}").status_code == 200
    # One live region, written only when its text changes (app.js announce); the status line that
    # changes with every poll is not live
    assert page.text.count("aria-live") == 1 and 'id="announce"' in page.text
    # The API stays keyed, and a cross-origin preflight gets no CORS grant
    assert client.get("/jobs/" + "0" * 32).status_code == 401
    preflight = client.options(
        "/jobs", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_static_files_stay_inside_their_folder(app_client: TestClient) -> None:
    assert app_client.get("/static/../routes/ui.py").status_code == 404
    assert app_client.get("/static/%2e%2e/routes/ui.py").status_code == 404
