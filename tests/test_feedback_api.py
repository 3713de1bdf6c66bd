"""The feedback web API: every bad input is a 4xx with a clear message and changes nothing."""

from __future__ import annotations

import base64
import io
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from feedback_runs import untrained_run
from PIL import Image

from mimic_runner.analysis.load import LoadedRun, load_run
from mimic_runner.feedback.app import STATIC, create_app
from mimic_runner.feedback.middleware import MAX_BODY
from mimic_runner.feedback.models import state_sha256
from mimic_runner.feedback.retrain import Step
from mimic_runner.feedback.session import FeedbackSession
from mimic_runner.feedback.store import sha256_file

TOKEN = "s3cret-token"
OVERRIDES = ["model=attention_branch", "data.synth.params.n=240", "data.image_size=64"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # An untrained model is enough to exercise the API (training is tested elsewhere).
    return untrained_run(tmp_path_factory.mktemp("api-run"), OVERRIDES)


@pytest.fixture(scope="module")
def loaded(run_dir: Path) -> LoadedRun:
    return load_run(run_dir)


@pytest.fixture
def session(run_dir: Path, loaded: LoadedRun, tmp_path: Path) -> FeedbackSession:
    # A fresh workspace (store, versions) per test, on the same loaded data and model.
    return FeedbackSession(run_dir, workspace=tmp_path / "ws", loaded=loaded)


@pytest.fixture
def client(session: FeedbackSession) -> TestClient:
    return TestClient(create_app(session))


def _train_id(session: FeedbackSession, k: int = 0) -> str:
    return str(session.dm.ids["train"][k])


def _rect(image_id: str, kind: str = "exclude", pts=((0.1, 0.1), (0.4, 0.3))) -> dict:
    return {"image_id": image_id, "shape": "rect", "kind": kind, "points": [list(p) for p in pts]}


def _snapshot(session: FeedbackSession) -> tuple:
    """Everything a bad request must leave untouched."""
    return (session.store.rois(), session.store.versions(), session.store.events())


def _detail(r) -> str:  # type: ignore[no-untyped-def]
    d = r.json()["detail"]
    assert isinstance(d, str) and d and "\n" not in d, d  # one clear line
    return d


# -- access token -----------------------------------------------------------------------------
def test_token_required_when_set(session: FeedbackSession) -> None:
    c = TestClient(create_app(session, token=TOKEN))
    before = _snapshot(session)
    for path in ("/api/info", "/", "/docs", "/openapi.json", "/static/app.js"):
        r = c.get(path)
        assert r.status_code == 401, path
        assert "access token" in _detail(r)
    assert c.get("/api/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/api/info", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    r = c.post("/api/rois", json={"rois": [_rect(_train_id(session))]})
    assert r.status_code == 401
    assert c.post("/api/retrain", json={}).status_code == 401
    assert c.post("/api/rollback").status_code == 401
    r = c.get("/?token=nope", follow_redirects=False)
    assert r.status_code == 401 and "wrong access token" in _detail(r)
    assert _snapshot(session) == before
    ok = c.get("/api/info", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["height"] == 64


def test_token_cookie_from_query(session: FeedbackSession) -> None:
    c = TestClient(create_app(session, token=TOKEN))
    r = c.get(f"/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    # The client keeps the cookie: the page and the API now work without a header.
    assert c.get("/").status_code == 200
    assert c.get("/api/status").status_code == 200


# -- validation ---------------------------------------------------------------------------------
def test_out_of_image_roi(client: TestClient, session: FeedbackSession) -> None:
    before = _snapshot(session)
    r = client.post("/api/rois", json={"rois": [_rect(_train_id(session),
                                                      pts=((0.1, 0.1), (1.3, 0.5)))]})
    assert r.status_code == 422
    assert "outside the image" in _detail(r) and "points" in _detail(r)
    r = client.post("/api/rois", json={"rois": [_rect(_train_id(session),
                                                      pts=((-0.2, 0.1), (0.3, 0.5)))]})
    assert r.status_code == 422
    # NaN is valid Python JSON but not a coordinate.
    r = client.post("/api/rois", content=b'{"rois": [{"image_id": "%s", "shape": "rect", '
                    b'"kind": "include", "points": [[NaN, 0.1], [0.5, 0.5]]}]}'
                    % _train_id(session).encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert _snapshot(session) == before


@pytest.mark.parametrize("bad", ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd",
                                 "nope", "synth_cxr-000000%00"])
def test_traversal_and_unknown_ids(client: TestClient, session: FeedbackSession,
                                   bad: str) -> None:
    before = _snapshot(session)
    for suffix in ("image.png", "attention.png", "attention", "prediction"):
        r = client.get(f"/api/images/{bad}/{suffix}")
        assert r.status_code == 404, (bad, suffix)
        if "etc" in bad and "%2F" in bad:
            assert "unknown image id" in _detail(r)  # reached the lookup, refused there
    r = client.get("/api/rois", params={"image_id": "../../etc/passwd"})
    assert r.status_code == 404 and "unknown image id" in _detail(r)
    r = client.post("/api/rois", json={"rois": [_rect("../../etc/passwd")]})
    assert r.status_code == 404 and "not an id of this dataset" in _detail(r)
    assert _snapshot(session) == before


def test_oversized_body(client: TestClient, session: FeedbackSession) -> None:
    before = _snapshot(session)
    big = b'{"rois": [' + b" " * (1 << 20) + b"]}"
    r = client.post("/api/rois", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "too large" in _detail(r)

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"rois": ['
        for _ in range(20):
            yield b" " * 65536
        yield b"]}"

    r = client.post("/api/rois", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert _snapshot(session) == before


def test_bounded_payloads(client: TestClient, session: FeedbackSession) -> None:
    image = _train_id(session)
    before = _snapshot(session)
    cases = [
        {"rois": [_rect(image)] * 51},  # more regions than allowed in one request
        {"rois": [{"image_id": image, "shape": "polygon", "kind": "include",
                   "points": [[0.5 + 0.4 * np.cos(t), 0.5 + 0.4 * np.sin(t)]
                              for t in np.linspace(0, 6, 65)]}]},
        {"rois": [{**_rect(image), "colour": "red"}]},  # unknown field
        {"rois": [{**_rect(image), "shape": "circle"}]},
        {"rois": [{**_rect(image), "weight": 0}]},
        {"rois": [_rect(image, pts=((0.2, 0.2), (0.2, 0.6)))]},  # no area
        {"rois": []},
        {"rois": [_rect("x" * 300)]},  # id longer than any id
    ]
    for body in cases:
        r = client.post("/api/rois", json=body)
        assert r.status_code == 422, body
        _detail(r)
    test_id = str(session.dm.ids["test"][0])
    r = client.post("/api/rois", json={"rois": [_rect(test_id)]})
    assert r.status_code == 422 and "held out" in _detail(r)
    assert _snapshot(session) == before
    # The per-image cap holds across requests: 409 once full.
    for _ in range(5):
        assert client.post("/api/rois", json={"rois": [_rect(image)] * 10}).status_code == 201
    r = client.post("/api/rois", json={"rois": [_rect(image)]})
    assert r.status_code == 409 and "at most 50" in _detail(r)
    assert len(session.store.rois(image)) == 50


def test_second_retrain_is_refused(client: TestClient, session: FeedbackSession) -> None:
    r = client.post("/api/retrain", json={"epochs": 1})
    assert r.status_code == 422 and "no feedback" in _detail(r)  # nothing to learn from yet
    client.post("/api/rois", json={"rois": [_rect(_train_id(session))]})
    runner = client.app.state.runner  # type: ignore[attr-defined]
    release, started = threading.Event(), threading.Event()

    def slow_retrain(session, params, progress, **kw):  # type: ignore[no-untyped-def]
        progress(Step(3, 10, 0.3, "pretending to train"))
        started.set()
        release.wait(30)
        raise RuntimeError("stopped by the test")

    runner.retrain_fn = slow_retrain
    r = client.post("/api/retrain", json={"epochs": 1, "gamma": 5})
    assert r.status_code == 202 and r.json()["state"] == "running"
    assert started.wait(30)
    before = _snapshot(session)
    r = client.post("/api/retrain", json={"epochs": 1})
    assert r.status_code == 409 and "already running" in _detail(r) and "30%" in _detail(r)
    for path in ("/api/accept", "/api/rollback"):
        r = client.post(path, json={})
        assert r.status_code == 409 and "retraining is running" in _detail(r)
    status = client.get("/api/retrain").json()
    assert status["state"] == "running" and status["message"] == "pretending to train"
    assert _snapshot(session) == before
    release.set()
    runner.join(30)
    status = client.get("/api/retrain").json()
    assert status["state"] == "failed" and "stopped by the test" in status["error"]
    assert session.store.versions() == before[1]


def test_retrain_parameters_are_validated(client: TestClient, session: FeedbackSession) -> None:
    client.post("/api/rois", json={"rois": [_rect(_train_id(session))]})
    before = _snapshot(session)
    for body in ({"epochs": 0}, {"lr": -1}, {"train": "head"}, {"mode": "blend"},
                 {"gamma": "a lot"}, {"heldout": "train"}, {"unknown": 1}):
        r = client.post("/api/retrain", json=body)
        assert r.status_code == 422, body
        _detail(r)
    assert client.get("/api/retrain").json()["state"] == "idle"
    assert _snapshot(session) == before


def test_decisions_without_versions(client: TestClient, session: FeedbackSession) -> None:
    before = _snapshot(session)
    r = client.post("/api/rollback")
    assert r.status_code == 409 and "nothing to roll back" in _detail(r)
    r = client.post("/api/accept", json={})
    assert r.status_code == 409 and "no candidate" in _detail(r)
    r = client.post("/api/accept", json={"version": 1})  # already the current version
    assert r.status_code == 200 and r.json()["already"] is True
    r = client.post("/api/accept", json={"version": 7})
    assert r.status_code == 404
    r = client.get("/api/diff")
    assert r.status_code == 409 and "no candidate" in _detail(r)
    assert client.delete("/api/rois/12345").status_code == 404
    assert _snapshot(session) == before
    status = client.get("/api/status").json()
    assert status["current"]["id"] == 1 and status["candidate"] is None


def test_cross_origin_writes_and_host_allow_list(session: FeedbackSession) -> None:
    c = TestClient(create_app(session))
    before = _snapshot(session)
    r = c.post("/api/rois", json={"rois": [_rect(_train_id(session))]},
               headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-origin" in _detail(r)
    r = c.post("/api/rollback", headers={"origin": "null"})
    assert r.status_code == 403
    assert _snapshot(session) == before
    same = c.post("/api/rois", json={"rois": [_rect(_train_id(session))]},
                  headers={"origin": "http://testserver"})
    assert same.status_code == 201
    local = TestClient(create_app(session, allowed_hosts=["127.0.0.1", "localhost"]))
    r = local.get("/api/info")  # Host: testserver, as a DNS-rebinding page would send
    assert r.status_code == 400 and "not served here" in _detail(r)
    assert local.get("/api/info", headers={"host": "127.0.0.1:8000"}).status_code == 200


# -- page, docs and data ----------------------------------------------------------------------
def test_docs_work_offline_and_list_every_endpoint(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    routes = {(m, r.path) for r in client.app.routes  # type: ignore[attr-defined]
              if getattr(r, "path", "").startswith("/api") for m in r.methods}
    documented = {(m.upper(), re.sub(r"\{(\w+)\}", r"{\1}", p))
                  for p, ops in spec["paths"].items() for m in ops}
    normalised = {(m, p.replace("{image_id:path}", "{image_id}")) for m, p in routes}
    assert normalised == documented
    for ops in spec["paths"].values():
        for op in ops.values():
            assert op.get("summary"), op
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    # Nothing on the page or the docs loads from another host.
    for f in STATIC.iterdir():
        text = f.read_text()
        assert not re.search(r"https?://|(src|href)=[\"']?//", text), f.name
        assert client.get(f"/static/{f.name}").status_code == 200


def test_images_predictions_and_maps(client: TestClient, session: FeedbackSession) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    listing = client.get("/api/images", params={"split": "val", "offset": 2, "limit": 3}).json()
    assert listing["total"] == len(session.dm.ids["val"]) and len(listing["items"]) == 3
    assert client.get("/api/images", params={"split": "secret"}).status_code == 422
    assert client.get("/api/images", params={"limit": 10_000}).status_code == 422
    image_id = listing["items"][0]["id"]
    png = Image.open(io.BytesIO(client.get(f"/api/images/{image_id}/image.png").content))
    assert png.size == (64, 64) and png.mode == "L"
    assert np.array_equal(np.asarray(png), session.image_uint8(image_id)[0])
    att = np.asarray(Image.open(io.BytesIO(
        client.get(f"/api/images/{image_id}/attention.png").content)))
    expected = np.rint(session.attention(image_id) * 255)
    assert att.shape == (64, 64) and np.abs(att - expected).max() <= 1
    exact = client.get(f"/api/images/{image_id}/attention").json()
    values = np.frombuffer(base64.b64decode(exact["values"]), dtype="<f4")
    assert (exact["height"], exact["width"], exact["version"]) == (64, 64, 1)
    assert np.array_equal(values.reshape(64, 64), session.attention(image_id))
    pred = client.get(f"/api/images/{image_id}/prediction").json()
    assert abs(sum(pred["probabilities"].values()) - 1) < 1e-5
    assert pred["version"] == 1 and pred["label_name"] == session.class_names[pred["label"]]
    assert client.get(f"/api/images/{image_id}/prediction",
                      params={"version": 9}).status_code == 404


def test_full_flow_through_the_api(client: TestClient, session: FeedbackSession,
                                   run_dir: Path) -> None:
    """ROIs -> retrain (background, progress) -> diff -> accept -> rollback (byte-identical)."""
    run_sha = sha256_file(run_dir / "checkpoints" / "last.ckpt")
    first = client.get("/api/status").json()
    assert first["current"]["sha256"] == run_sha
    ids = [_train_id(session, k) for k in range(3)]
    rois = [_rect(i) for i in ids] + [
        {"image_id": ids[0], "shape": "ellipse", "kind": "include",
         "points": [[0.3, 0.4], [0.7, 0.8]]},
        {"image_id": ids[1], "shape": "polygon", "kind": "include",
         "points": [[0.3, 0.3], [0.7, 0.35], [0.5, 0.8]]}]
    assert client.post("/api/rois", json={"rois": rois, "author": "dr. test"}).status_code == 201
    r = client.post("/api/retrain", json={"epochs": 1, "max_batches": 2, "gamma": 50,
                                          "author": "dr. test"})
    assert r.status_code == 202
    seen = set()
    deadline = time.time() + 300
    while time.time() < deadline:
        s = client.get("/api/retrain").json()
        seen.add(round(s["progress"]["fraction"], 2))
        if s["state"] != "running":
            break
        time.sleep(0.2)
    assert s["state"] == "done", s
    assert len(seen) >= 2  # progress was reported along the way
    status = client.get("/api/status").json()
    cand = status["candidate"]
    assert cand["id"] == 2 and cand["parent"] == 1 and status["current"]["id"] == 1
    assert cand["params"]["feedback_images"] == 3 and cand["author"] == "dr. test"
    diff = client.get("/api/diff").json()
    assert diff["before_version"] == 1 and diff["after_version"] == 2
    assert diff["feedback"]["n_images"] == 3 and diff["heldout"]["split"] == "val"
    assert diff["feedback"]["exclude_share"]["after"] is not None
    assert client.post("/api/accept", json={}).json()["current"]["id"] == 2
    accepted = client.get("/api/status").json()
    assert accepted["weights_sha256"] != first["weights_sha256"]
    r = client.post("/api/rollback").json()
    assert r["rolled_back"]["id"] == 2 and r["current"]["id"] == 1
    back = client.get("/api/status").json()
    assert back["weights_sha256"] == first["weights_sha256"]  # byte-identical weights
    v1 = session.store.version(1)
    assert sha256_file(session.store.checkpoint_path(v1)) == v1["sha256"] == run_sha
    assert [v["status"] for v in back["versions"]] == ["accepted", "rolled_back"]
    actions = [e["action"] for e in client.get("/api/events").json()]
    assert actions[:4] == ["rollback", "accept", "retrain_finished", "candidate"]


def test_rgb_dataset(tmp_path: Path) -> None:
    """The blood-smear set (RGB cells): RGB PNGs, regions and a retraining step work the same."""
    pytest.importorskip("mimic_runner.data.synth_smear", reason="synth_smear not available")
    from mimic_runner.feedback.retrain import RetrainParams, retrain

    run = untrained_run(tmp_path / "smear-run", ["model=attention_branch", "data=synth_smear",
                                                 "data.synth.params.n=120"])
    session = FeedbackSession(run, workspace=tmp_path / "ws")
    client = TestClient(create_app(session))
    assert client.get("/api/info").json()["channels"] == 3
    image_id = client.get("/api/images").json()["items"][0]["id"]
    png = Image.open(io.BytesIO(client.get(f"/api/images/{image_id}/image.png").content))
    assert png.mode == "RGB"
    assert np.array_equal(np.asarray(png), session.image_uint8(image_id).transpose(1, 2, 0))
    assert client.post("/api/rois", json={"rois": [_rect(image_id)]}).status_code == 201
    cand = retrain(session, RetrainParams(epochs=1, max_batches=1))
    assert cand["status"] == "candidate"


# -- framing, headers, ids, hosts (issue 14) ----------------------------------------------------
def _secured(r) -> None:  # type: ignore[no-untyped-def]
    assert r.headers["x-frame-options"] == "DENY", r.url
    csp = r.headers["content-security-policy"]
    for part in ("frame-ancestors 'none'", "default-src 'self'", "script-src 'self'",
                 "object-src 'none'"):
        assert part in csp, (r.url, csp)
    assert r.headers["x-content-type-options"] == "nosniff"


def test_every_response_forbids_framing(session: FeedbackSession) -> None:
    open_app = TestClient(create_app(session, allowed_hosts=["127.0.0.1"]))
    local = {"host": "127.0.0.1:8000"}
    for path in ("/", "/docs", "/openapi.json", "/static/app.js", "/static/style.css",
                 "/static/docs.js", "/api/info", "/api/status", "/static/nope.js",
                 "/api/images/nope/image.png", "/api/rois/abc"):
        r = open_app.get(path, headers=local)
        assert r.status_code in (200, 404, 405, 422), path
        _secured(r)
    _secured(open_app.get("/api/info"))  # 400: Host refused
    _secured(open_app.post("/api/rois", content=b"x" * (MAX_BODY + 1), headers=local))
    _secured(open_app.post("/api/rollback", headers={**local, "origin": "http://evil"}))
    guarded = TestClient(create_app(session, token=TOKEN))
    for path in ("/", "/docs", "/static/app.js"):
        r = guarded.get(path)
        assert r.status_code == 401
        _secured(r)
    _secured(guarded.get(f"/?token={TOKEN}", follow_redirects=False))  # 303 with the cookie


def test_pages_need_no_inline_code() -> None:
    """The CSP allows scripts and styles from files only: no inline ones to break."""
    for name in ("index.html", "docs.html"):
        html = (STATIC / name).read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), name
        assert "<style" not in html and not re.search(r"\sstyle=", html), name
        assert not re.search(r"\son[a-z]+=", html), name  # no inline event handlers
    js = (STATIC / "app.js").read_text()
    assert "eval(" not in js and "new Function" not in js
    assert not re.search(r"style=\\?[\"']", js)  # no style attributes built in markup


def test_unexpected_error_is_one_json_line(session: FeedbackSession,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(session, "info", boom)
    r = TestClient(create_app(session), raise_server_exceptions=False).get("/api/info")
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert "internal error" in _detail(r) and "disk on fire" not in _detail(r)
    _secured(r)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("DELETE", "/api/rois/99999999999999999999", None),
    ("DELETE", "/api/rois/-3", None),
    ("DELETE", "/api/rois/0", None),
    ("DELETE", "/api/rois/abc", None),
    ("DELETE", "/api/rois/1.5", None),
    ("PATCH", "/api/rois/99999999999999999999", {"kind": "include"}),
    ("GET", "/api/images/{img}/attention?version=99999999999999999999", None),
    ("GET", "/api/images/{img}/prediction?version=-1", None),
    ("GET", "/api/images/{img}/attention.png?version=x", None),
    ("GET", "/api/diff?before=1&after=99999999999999999999", None),
    ("GET", "/api/diff?before=1e400", None),
    ("GET", "/api/images?offset=99999999999999999999", None),
    ("POST", "/api/accept", {"version": 10**20}),
    ("POST", "/api/revert", {"version": 10**20}),
    ("POST", "/api/revert", {"version": "one"}),
    ("POST", "/api/revert", {}),
    ("POST", "/api/discard", {"version": 2}),
])
def test_huge_and_malformed_ids_are_4xx_json(client: TestClient, session: FeedbackSession,
                                             method: str, path: str, body: dict | None) -> None:
    before = _snapshot(session)
    r = client.request(method, path.format(img=_train_id(session)), json=body)
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    _detail(r)
    assert _snapshot(session) == before


def test_non_utf8_and_odd_image_ids(client: TestClient) -> None:
    for raw in ("%FF%FE", "%C3%28", "a%00b", "x" * 2000):
        r = client.get(f"/api/images/{raw}/image.png")
        assert r.status_code == 404, raw
        _detail(r)


def test_any_loopback_host_serves_its_own_address(session: FeedbackSession) -> None:
    from mimic_runner.feedback.middleware import allowed_hosts_for

    assert allowed_hosts_for("0.0.0.0") is None and allowed_hosts_for("192.168.1.4") is None
    for bind, host in (("127.0.0.2", "127.0.0.2:8000"), ("127.9.9.9", "127.9.9.9"),
                       ("::1", "[::1]:8000"), ("localhost", "localhost:8000"),
                       ("127.0.0.1", "127.0.0.1:8000")):
        allowed = allowed_hosts_for(bind)
        assert allowed is not None and "127.0.0.1" in allowed
        c = TestClient(create_app(session, allowed_hosts=allowed))
        assert c.get("/api/info", headers={"host": host}).status_code == 200, bind
        r = c.get("/api/info", headers={"host": "evil.example:8000"})
        assert r.status_code == 400 and "not served here" in _detail(r)
    c = TestClient(create_app(session, allowed_hosts=allowed_hosts_for("127.0.0.2")))
    assert c.get("/api/info", headers={"host": "127.0.0.3:8000"}).status_code == 400


# -- editing regions, thumbnails ------------------------------------------------------------------
def test_edit_a_region(client: TestClient, session: FeedbackSession) -> None:
    image = _train_id(session)
    (roi,) = client.post("/api/rois", json={"rois": [_rect(image, "include")]}).json()
    rid = roi["id"]
    moved = client.patch(f"/api/rois/{rid}", json={"points": [[0.5, 0.5], [0.9, 0.8]]})
    assert moved.status_code == 200 and moved.json()["points"] == [[0.5, 0.5], [0.9, 0.8]]
    switched = client.patch(f"/api/rois/{rid}", json={"kind": "exclude", "author": "dr. x"})
    assert switched.json()["kind"] == "exclude" and switched.json()["shape"] == "rect"
    ev = client.get("/api/events").json()[0]
    assert ev["action"] == "update_roi" and ev["who"] == "dr. x"
    assert ev["detail"]["before"] == {"kind": "include"}
    before = _snapshot(session)
    for body in ({"points": [[0.5, 0.5], [1.4, 0.8]]}, {"points": [[0.5, 0.5], [0.5, 0.8]]},
                 {"points": [[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]]}, {"kind": "maybe"},
                 {"shape": "ellipse"}, {}, {"weight": 0}, {"image_id": "other"}):
        r = client.patch(f"/api/rois/{rid}", json=body)
        assert r.status_code == 422, body
        _detail(r)
    assert client.patch("/api/rois/424242", json={"kind": "include"}).status_code == 404
    assert _snapshot(session) == before


def test_thumbnails(client: TestClient, session: FeedbackSession) -> None:
    image = _train_id(session)
    r = client.get(f"/api/images/{image}/thumb.png", params={"size": 32})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (32, 32)
    assert Image.open(io.BytesIO(client.get(f"/api/images/{image}/thumb.png").content)
                      ).size == (48, 48)
    assert client.get("/api/images/nope/thumb.png").status_code == 404
    assert client.get(f"/api/images/{image}/thumb.png", params={"size": 4096}).status_code == 422


# -- decisions: discard, revert, every version viewable -----------------------------------------
def test_discard_revert_and_history(client: TestClient, session: FeedbackSession) -> None:
    from mimic_runner.feedback.retrain import RetrainParams, retrain

    image = _train_id(session)
    client.post("/api/rois", json={"rois": [_rect(image), _rect(image, "include",
                                                               ((0.4, 0.4), (0.9, 0.9)))]})
    status = client.get("/api/status").json()
    assert status["revert_targets"] == [] and status["candidate"] is None
    r = client.post("/api/discard")
    assert r.status_code == 409 and "no candidate" in _detail(r)
    r = client.post("/api/revert", json={"version": 1})
    assert r.status_code == 409 and "already" in _detail(r)

    tiny = {"epochs": 1, "max_batches": 1}
    retrain(session, RetrainParams(**tiny, gamma=12.5))  # v2
    r = client.post("/api/discard", json={"author": "dr. d"})
    assert r.status_code == 200 and r.json()["rolled_back"]["id"] == 2
    assert r.json()["current"]["id"] == 1 and r.json()["status"]["candidate"] is None
    assert client.post("/api/accept", json={"version": 2}).status_code == 409
    retrain(session, RetrainParams(**tiny, gamma=40))  # v3
    assert client.post("/api/accept", json={}).json()["current"]["id"] == 3
    retrain(session, RetrainParams(**tiny, gamma=80))  # v4
    assert client.post("/api/accept", json={}).json()["current"]["id"] == 4
    retrain(session, RetrainParams(**tiny, gamma=5))  # v5, pending
    status = client.get("/api/status").json()
    assert status["revert_targets"] == [3, 1]
    r = client.post("/api/revert", json={"version": 2})  # rolled back: not a target
    assert r.status_code == 409 and "revert to one of 3, 1" in _detail(r)
    sha_v1 = status["versions"][0]["sha256"]
    r = client.post("/api/revert", json={"version": 1, "author": "dr. r"}).json()
    assert r["current"]["id"] == 1 and r["rolled_back"] == [3, 4, 5]
    back = client.get("/api/status").json()
    assert back["current"]["sha256"] == sha_v1 and back["revert_targets"] == []
    assert back["weights_sha256"] == state_sha256(session.model(1))
    # The history keeps every version with its status and parameters...
    versions = client.get("/api/versions").json()
    assert [v["status"] for v in versions] == ["accepted", "rolled_back", "rolled_back",
                                               "rolled_back", "rolled_back"]
    assert [v["params"].get("gamma") for v in versions] == [None, 12.5, 40, 80, 5]
    assert versions[1]["metrics"]["val/n_images"] == len(session.dm.ids["val"])
    # ...and each stays viewable and comparable, rolled back or not.
    att = client.get(f"/api/images/{image}/attention", params={"version": 4}).json()
    assert att["version"] == 4
    d = client.get("/api/diff", params={"before": 2, "after": 4}).json()
    assert (d["before_version"], d["after_version"]) == (2, 4)
    assert d["feedback"]["n_images"] == 1 and d["feedback"]["meaningful"] is False
    assert d["heldout"]["meaningful"] is (len(session.dm.ids["val"]) >= 10)
    actions = [e["action"] for e in client.get("/api/events").json()]
    assert actions[0] == "revert" and "discard" in actions


# -- issue 21's API: revision, cancel, lost retraining, estimate, idempotent decisions ----------
def _wait(client: TestClient, states: tuple[str, ...], timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = client.get("/api/retrain").json()
        if s["state"] in states:
            return s
        time.sleep(0.05)
    raise AssertionError(f"retraining still {s['state']}: {s}")


def test_status_revision_counts_and_authors(client: TestClient, session: FeedbackSession) -> None:
    s0 = client.get("/api/status").json()
    assert s0["images_with_rois"] == 0 and s0["retrain"]["state"] == "idle"
    assert set(s0["retrain"]["progress"]) == {"done_steps", "total_steps", "fraction"}
    ids = [_train_id(session, k) for k in range(2)]
    created = client.post("/api/rois", json={"rois": [_rect(ids[0]), _rect(ids[0], "include"),
                                                      _rect(ids[1])], "author": "dr. a"}).json()
    s1 = client.get("/api/status").json()
    assert s1["revision"] > s0["revision"] and s1["images_with_rois"] == 2
    client.patch(f"/api/rois/{created[0]['id']}", json={"kind": "include", "author": "dr. b"})
    s2 = client.get("/api/status").json()
    client.delete(f"/api/rois/{created[2]['id']}", params={"author": "dr. c"})
    s3 = client.get("/api/status").json()
    assert s1["revision"] < s2["revision"] < s3["revision"] and s3["images_with_rois"] == 1
    events = client.get("/api/events").json()
    assert [e["author"] for e in events[:3]] == ["dr. c", "dr. b", "dr. a"]
    assert all(e["time"].endswith("+00:00") for e in events)  # ISO, UTC


def test_cancel_stops_a_long_retraining(client: TestClient, session: FeedbackSession) -> None:
    assert client.post("/api/retrain/cancel", json={}).status_code == 409  # nothing runs
    client.post("/api/rois", json={"rois": [_rect(_train_id(session))]})
    before = client.get("/api/status").json()
    r = client.post("/api/retrain", json={"epochs": 1000, "author": "dr. start"})
    assert r.status_code == 202
    deadline = time.time() + 300
    while client.get("/api/retrain").json()["progress"]["done_steps"] < 2:
        assert time.time() < deadline
        time.sleep(0.05)
    running = client.get("/api/status").json()
    assert running["retrain"]["state"] == "running" and running["revision"] > before["revision"]
    assert running["retrain"]["estimate_s"] > 0 and running["retrain"]["author"] == "dr. start"
    t0 = time.perf_counter()
    r = client.post("/api/retrain/cancel", json={"author": "dr. stop"})
    assert r.status_code == 202 and r.json()["state"] == "cancelling"
    s = _wait(client, ("cancelled", "failed", "done"), timeout=30)
    stopped_in = time.perf_counter() - t0
    assert s["state"] == "cancelled" and stopped_in < 5, (s, stopped_in)
    assert s["finished_at"] and s["progress"]["done_steps"] < s["progress"]["total_steps"]
    assert client.get("/api/status").json()["candidate"] is None  # no candidate made
    event = next(e for e in client.get("/api/events").json()
                 if e["action"] == "retrain_cancelled")
    assert event["author"] == "dr. stop" and event["detail"]["started_by"] == "dr. start"
    assert event["detail"]["params"]["epochs"] == 1000
    progress = event["detail"]["progress"]
    assert 2 <= progress["done_steps"] < progress["total_steps"]
    assert client.post("/api/retrain/cancel", json={}).status_code == 409


def test_a_retraining_lost_with_the_server_is_reported(session: FeedbackSession,
                                                       run_dir: Path, loaded: LoadedRun) -> None:
    session.store.log_event("dr. x", "retrain_started", {"run": "r1", "params": {"epochs": 9}})
    for _ in range(2):  # the server starts (again): one retrain_lost, the state stays "lost"
        again = FeedbackSession(run_dir, workspace=session.workspace, loaded=loaded)
        s = TestClient(create_app(again)).get("/api/status").json()["retrain"]
        assert s["state"] == "lost" and "interrupted" in s["message"]
        assert s["params"] == {"epochs": 9} and s["author"] == "dr. x"
    actions = [e["action"] for e in session.store.events()]
    assert actions.count("retrain_lost") == 1 and actions[0] == "retrain_lost"


def test_retraining_over_a_waiting_candidate_asks_first(client: TestClient,
                                                        session: FeedbackSession) -> None:
    from mimic_runner.feedback.retrain import RetrainParams, retrain

    client.post("/api/rois", json={"rois": [_rect(_train_id(session))]})
    cand = retrain(session, RetrainParams(epochs=1, max_batches=1))
    r = client.post("/api/retrain", json={"epochs": 1})
    assert r.status_code == 409 and "replace_candidate=true" in _detail(r)
    runner = client.app.state.runner  # type: ignore[attr-defined]
    runner.retrain_fn = lambda session, params, **kw: {"id": 99, "replace": kw}
    r = client.post("/api/retrain", json={"epochs": 1, "replace_candidate": True})
    assert r.status_code == 202
    s = _wait(client, ("done",), timeout=30)
    assert s["version"] == 99
    assert client.get("/api/status").json()["candidate"]["id"] == cand["id"]


def test_estimate_is_measured_and_cached(client: TestClient, session: FeedbackSession) -> None:
    body = {"epochs": 10, "batch_size": 16}
    t0 = time.perf_counter()
    first = client.post("/api/retrain/estimate", json=body).json()
    took = time.perf_counter() - t0
    assert first["measured"] is True and first["cached"] is False and first["passes"] == 10
    assert first["per_pass_s"] > 0 and first["seconds"] >= 10 * first["per_pass_s"] * 0.99
    assert took < 30  # < 3 s on a quiet machine; generous for a shared CI runner
    again = client.post("/api/retrain/estimate", json={**body, "epochs": 20}).json()
    assert again["cached"] is True and again["per_pass_s"] == first["per_pass_s"]
    assert again["seconds"] > first["seconds"]
    assert client.post("/api/retrain/estimate", json={"epochs": 0}).status_code == 422


def test_decisions_are_idempotent_and_diff_says_what_changed(client: TestClient,
                                                             session: FeedbackSession) -> None:
    from mimic_runner.feedback.retrain import RetrainParams, retrain

    client.post("/api/rois", json={"rois": [_rect(_train_id(session))]})
    retrain(session, RetrainParams(epochs=1, max_batches=1, gamma=50))  # v2
    d = client.get("/api/diff", params={"after": 2, "heldout": "test"}).json()
    assert (d["before_version"], d["after_version"]) == (1, 2)  # before = its parent
    assert d["heldout"]["split"] == "test"
    acc, dx = d["accuracy"], d["diagnoses"]
    assert acc["n"] == len(session.dm.ids["test"]) == d["heldout"]["n_images"]
    lo, hi = acc["delta_ci95"]
    assert lo <= acc["delta"] <= hi and acc["delta"] == pytest.approx(acc["after"] - acc["before"])
    assert dx["total_changed"] == d["heldout"]["prediction_changes"]
    assert dx["wrong_to_right"] - dx["right_to_wrong"] == round(acc["delta"] * acc["n"])
    body = {"version": 2, "author": "dr. a", "request_id": "5f0c-accept"}
    first = client.post("/api/accept", json=body)
    second = client.post("/api/accept", json=body)
    assert first.status_code == second.status_code == 200
    assert first.json()["current"] == second.json()["current"]
    assert second.json()["replayed"] is True
    assert [e["action"] for e in session.store.events()].count("accept") == 1
    again = client.post("/api/accept", json={"version": 2})
    assert again.status_code == 200 and again.json()["already"] is True
    d = client.get("/api/diff", params={"before": 2, "after": 1}).json()
    assert (d["before_version"], d["after_version"]) == (2, 1)


# -- finding images: filters, sort, attention share; one region onto many images ---------------
def test_image_filters_and_sort(client: TestClient, session: FeedbackSession) -> None:
    all_items = client.get("/api/images", params={"limit": 500}).json()
    items = all_items["items"]
    assert all_items["total"] == len(session.dm.ids["train"]) == len(items)
    for it in items:
        assert it["correct"] == (it["label"] == it["predicted"]) and 0 <= it["probability"] <= 1
    zeros = client.get("/api/images", params={"label": 0, "limit": 500}).json()
    assert zeros["total"] == sum(it["label"] == 0 for it in items) > 0
    assert all(it["label"] == 0 for it in zeros["items"])
    wrong = client.get("/api/images", params={"correct": "false", "limit": 500}).json()
    assert wrong["total"] == sum(not it["correct"] for it in items)
    pred1 = client.get("/api/images", params={"predicted": 1, "limit": 500}).json()
    assert pred1["total"] == sum(it["predicted"] == 1 for it in items)
    conf = client.get("/api/images", params={"sort": "-confidence", "limit": 500}).json()
    probs = [it["probability"] for it in conf["items"]]
    assert probs == sorted(probs, reverse=True)
    # The share of attention inside the top-left quarter, highest first.
    q = {"region": "0,0,32,32", "sort": "-attention_share", "limit": 5, "offset": 0}
    top = client.get("/api/images", params=q).json()["items"]
    shares = [it["attention_share"] for it in top]
    assert shares == sorted(shares, reverse=True) and all(0 <= v <= 1 for v in shares)
    m = session.attention(top[0]["id"])
    assert shares[0] == pytest.approx(m[:32, :32].sum() / m.sum(), rel=2e-3)
    client.post("/api/rois", json={"rois": [_rect(top[0]["id"])]})
    marked = client.get("/api/images", params={"has_rois": "true"}).json()
    assert [it["id"] for it in marked["items"]] == [top[0]["id"]]
    assert marked["items"][0]["n_rois"] == 1
    for bad in ({"region": "0,0,99,9"}, {"region": "a,b"}, {"sort": "-attention_share"},
                {"label": 7}, {"sort": "size"}):
        r = client.get("/api/images", params=bad)
        assert r.status_code == 422, bad
        _detail(r)


def test_apply_one_region_to_many_images(client: TestClient, session: FeedbackSession) -> None:
    roi = {"shape": "rect", "kind": "exclude", "points": [[0, 0], [0.25, 0.25]]}
    labels = session.dm.splits["train"].tensors["label"]
    r = client.post("/api/rois/apply", json={"roi": roi, "filter": {"label": 1},
                                             "author": "dr. m"})
    assert r.status_code == 201
    out = r.json()
    assert out["created"] == int((labels == 1).sum()) == len(out["image_ids"])
    rois = session.store.rois()
    assert len(rois) == out["created"] and {r["author"] for r in rois} == {"dr. m"}
    assert client.get("/api/status").json()["images_with_rois"] == out["created"]
    # All or none: one held-out image refuses the whole request.
    before = _snapshot(session)
    val_id = str(session.dm.ids["val"][0])
    r = client.post("/api/rois/apply", json={"roi": roi, "image_ids": [_train_id(session, 0),
                                                                       val_id]})
    assert r.status_code == 422 and "held out" in _detail(r)
    r = client.post("/api/rois/apply", json={"roi": {**roi, "points": [[0, 0], [2, 2]]}})
    assert r.status_code == 422
    assert _snapshot(session) == before
    r = client.post("/api/rois/apply", json={"roi": roi, "image_ids": [_train_id(session, 1)]})
    assert r.status_code == 201 and r.json()["created"] == 1


def test_a_body_that_never_arrives_is_cut(session: FeedbackSession) -> None:
    import socket as socketlib

    import uvicorn

    app = create_app(session, body_timeout=1.0)
    with socketlib.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 60
        while not server.started:
            assert time.time() < deadline
            time.sleep(0.05)
        with socketlib.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /api/rois HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                      b"application/json\r\nContent-Length: 100\r\n\r\n")
            t0 = time.perf_counter()
            answer = s.recv(4096)
            took = time.perf_counter() - t0
        assert answer.startswith(b"HTTP/1.1 408") and took < 10, (answer[:80], took)
    finally:
        server.should_exit = True
        thread.join(30)
