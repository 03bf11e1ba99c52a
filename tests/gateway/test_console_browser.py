"""The console in a real browser: Debian's headless Chromium driven by Selenium through
Debian's chromedriver (nothing downloads a browser or a driver), against a real
``margin serve`` whose SQLite ledger holds bulk rows of the last 40 days and the rows of
requests this test sent through it. Every figure checked is computed here from the ledger
file itself. One gateway and one browser for the module; skipped with the reason when
chromium is missing, failed instead when CI=true."""

from __future__ import annotations

import os
import random
import sqlite3
import time
import uuid
from typing import Any, Callable

import httpx
import orjson
import pytest

from margin.config import LedgerConfig
from margin.metering.ledger import LedgerWriter
from tests.conftest import IN_CI, GatewayProcess, ThreadServer, fake_model

MASTER = "browser-master-" + uuid.uuid4().hex
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DAY = 86_400.0
SECRET_PROMPT = "the prompt the console must not show " + uuid.uuid4().hex[:8]


def _need_browser() -> None:
    why = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        why.append("the selenium package")
    if why:
        msg = f"browser tests need {', '.join(why)} (apt-get install chromium chromium-driver)"
        if IN_CI:
            pytest.fail(msg + " in CI")
        pytest.skip(msg)


def bulk_rows(now: float, n: int = 300) -> list[dict[str, Any]]:
    """Rows over the last 40 days, none within 10 minutes of a window's edge."""
    rnd = random.Random(11)
    rows = []
    while len(rows) < n:
        ts = now - 600 - rnd.random() ** 1.5 * 40 * DAY
        if any(abs(ts - (now - d * DAY)) < 600 for d in (1, 7, 14, 30)):
            continue
        user = rnd.choice(["alice", "bob", "carol", "dave"])
        cache = rnd.choice(["miss"] * 6 + ["exact", "semantic"])
        cost = round(rnd.uniform(0.001, 0.05), 6)
        rows.append({"id": "bulk-" + uuid.uuid4().hex, "ts": ts, "endpoint": "chat",
                     "user_id": user, "team": "core" if user in ("alice", "bob") else "ops",
                     "feature": rnd.choice(["chat", "search"]),
                     "model": rnd.choice(["small", "large"]), "requested_model": "small",
                     "status": rnd.choice([200] * 9 + [500]), "cache": cache,
                     "cost_usd": cost if cache == "miss" else 0.0,
                     "saved_usd": 0.0 if cache == "miss" else cost,
                     "prompt_tokens": rnd.randint(5, 400), "completion_tokens": rnd.randint(1, 99),
                     "latency_ms": rnd.uniform(5, 400), "upstream_ms": rnd.uniform(4, 390),
                     "overhead_ms": rnd.uniform(0.1, 2),
                     "stage_ms": orjson.dumps({"auth": 0.02, "router": 0.1}).decode()})
    return rows


class Ledger:
    """Reads the gateway's SQLite ledger directly: what the figures must equal."""

    def __init__(self, path: str) -> None:
        self.path = path

    def one(self, sql: str, *args: Any) -> Any:
        db = sqlite3.connect(self.path)
        try:
            return db.execute(sql, args).fetchone()
        finally:
            db.close()

    def count(self) -> int:
        return self.one("SELECT COUNT(*) FROM requests")[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    _need_browser()
    from margin.bench.fake_upstream import FakeUpstream

    tmp = tmp_path_factory.mktemp("console-browser")
    upstream = ThreadServer(FakeUpstream(delay_ms=0)).start()
    ledger_path = str(tmp / "ledger.db")
    rows = bulk_rows(time.time())
    w = LedgerWriter(LedgerConfig(url=ledger_path, journal=False))
    w.start()
    for r in rows:
        w.submit(r)
    w.close()
    gw = GatewayProcess(tmp, {
        "models": [fake_model("small", upstream.url), fake_model("large", upstream.url)],
        "ledger": {"url": ledger_path, "flush_interval_ms": 50},
        "limits": {"budgets": [{"scope": "team", "name": "core", "usd": 50, "period": "month"}]},
        "capacity": {"small": {"replica_rps": 1, "replicas": 2}},
        "console": {"refresh_interval_s": 2},
    }, env={"MARGIN_MASTER_KEY": MASTER}).start()
    api = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER}"},
                       timeout=60)
    ledger = Ledger(ledger_path)
    keys = {u: api.post("/admin/keys", json={"user": u, "team": t}).json()["key"]
            for u, t in (("alice", "core"), ("bob", "ops"))}
    for i in range(12):
        user = "alice" if i % 3 else "bob"
        # Repeated prompts: exact-cache hits among the rows.
        chat(gw.url, keys[user], f"{SECRET_PROMPT} {i % 4}", feature="support")
    wait_for(lambda: ledger.count() >= len(rows) + 12, "the gateway's rows in the ledger")
    driver = _driver()
    yield {"gw": gw, "api": api, "ledger": ledger, "driver": driver, "keys": keys}
    driver.quit()
    api.close()
    gw.stop()
    upstream.stop()


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from selenium.webdriver.common.selenium_manager import SeleniumManager

    # Both paths given, and offline: selenium-manager has nothing to look up or fetch. It
    # must not even run (it downloads drivers and browsers when it finds none).
    os.environ["SE_OFFLINE"] = "true"

    def refuse(self, args):
        raise AssertionError(f"selenium-manager was asked for {args}")
    SeleniumManager.binary_paths = refuse
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def chat(url: str, key: str, prompt: str, feature: str = "chat") -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=30,
                      headers={"authorization": f"Bearer {key}", "x-margin-feature": feature},
                      json={"model": "small", "max_tokens": 8,
                            "messages": [{"role": "user", "content": prompt}]})


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # a page mid-refresh: its elements come and go
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def metric(driver, name: str) -> float:
    from selenium.webdriver.common.by import By

    return float(driver.find_element(By.CSS_SELECTOR, f'[data-metric="{name}"]')
                 .get_attribute("data-value"))


def open_page(driver, name: str) -> None:
    from selenium.webdriver.common.by import By

    driver.execute_script(f"location.hash = '#{name}'")
    wait_for(lambda: driver.find_element(By.ID, "page").get_attribute("data-page") == name
             and driver.find_elements(By.CSS_SELECTOR, "#page h1")
             and "updated" in driver.find_element(By.ID, "updated").text, f"page {name}")
    assert not driver.find_element(By.ID, "error").is_displayed(), \
        driver.find_element(By.ID, "error").text


def click(driver, selector: str, by: str = "css selector") -> None:
    """Click what ``selector`` finds, again if a refresh redrew it in between."""
    wait_for(lambda: driver.find_element(by, selector).click() or True, f"to click {selector}")


def severe_logs(driver) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


@pytest.fixture(scope="module")
def logged_in(env):
    from selenium.webdriver.common.by import By

    d = env["driver"]
    d.get(env["gw"].url + "/ui")
    wait_for(lambda: d.find_element(By.ID, "login").is_displayed(), "the login form")
    d.find_element(By.ID, "login-key").send_keys(MASTER)
    d.find_element(By.CSS_SELECTOR, "#login-form button").click()
    open_page(d, "overview")
    return env


def test_overview_figures_equal_the_ledger_and_refresh_without_reload(logged_in):
    d, ledger = logged_in["driver"], logged_in["ledger"]

    def matches() -> bool:
        from selenium.webdriver.common.by import By

        now = float(d.find_element(By.ID, "page").get_attribute("data-generated-at"))
        n30, cost30 = ledger.one("SELECT COUNT(*), COALESCE(SUM(cost_usd), 0) FROM requests "
                                 "WHERE ts >= ? AND ts < ?", now - 30 * DAY, now)
        n7, errors7, hits7 = ledger.one(
            "SELECT COUNT(*), SUM(status >= 400), SUM(cache IN ('exact', 'semantic')) "
            "FROM requests WHERE ts >= ? AND ts < ?", now - 7 * DAY, now)
        saved = ledger.one("SELECT COALESCE(SUM(saved_usd), 0) FROM requests WHERE ts >= ? "
                           "AND ts < ? AND cache IN ('exact', 'semantic')", now - 30 * DAY, now)[0]
        assert ledger.one("SELECT COUNT(*) FROM requests WHERE notes LIKE '%_saved_usd%'"
                          )[0] == 0  # so the caches' savings are all there is
        return (metric(d, "requests") == n30
                and abs(metric(d, "spend_usd") - cost30) < 1e-6
                and abs(metric(d, "saved_usd") - saved) < 1e-6
                and abs(metric(d, "cache_hit_rate") - hits7 / n7) < 1e-5
                and abs(metric(d, "error_rate") - errors7 / n7) < 1e-5)

    wait_for(matches, "the overview's figures to equal the ledger's")
    assert ledger.one("SELECT COUNT(*) FROM requests WHERE cache = 'exact'")[0] > 0
    # New traffic shows up by itself: the page polls; it is not reloaded.
    d.execute_script("window.__not_reloaded = true")
    before = metric(d, "requests")
    for i in range(3):
        assert chat(logged_in["gw"].url, logged_in["keys"]["bob"], f"fresh {i}").status_code == 200
    wait_for(lambda: metric(d, "requests") >= before + 3, "the overview to refresh itself")
    assert d.execute_script("return window.__not_reloaded") is True
    wait_for(matches, "the refreshed figures to equal the ledger's")


def test_every_page_shows_the_ledgers_figures(logged_in):
    from selenium.webdriver.common.by import By

    d, ledger = logged_in["driver"], logged_in["ledger"]
    open_page(d, "spend")

    def spend_total() -> bool:
        el = d.find_element(By.CSS_SELECTOR, '[data-metric="spend_total_usd"]')
        since, until = float(el.get_attribute("data-since")), float(el.get_attribute("data-until"))
        want = ledger.one("SELECT COALESCE(SUM(cost_usd), 0) FROM requests WHERE ts >= ? AND "
                          "ts < ?", since, until)[0]
        return abs(float(el.get_attribute("data-value")) - want) < 1e-6
    wait_for(spend_total, "the spend page's total to equal the ledger's")
    assert d.find_elements(By.CSS_SELECTOR, 'table.spend-totals tr[data-group="core"]')

    open_page(d, "budgets")
    row = 'tr[data-scope="team:core"] [data-metric="budget_spent_usd"]'

    def budget() -> bool:
        import datetime as dt

        now = dt.datetime.now(dt.timezone.utc)
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()
        want = ledger.one("SELECT COALESCE(SUM(cost_usd), 0) FROM requests WHERE team = 'core' "
                          "AND ts >= ?", start)[0]
        got = float(d.find_element(By.CSS_SELECTOR, row).get_attribute("data-value"))
        return abs(got - want) < 1e-6
    wait_for(budget, "the budget's spend to equal the ledger's")

    open_page(d, "capacity")
    wait_for(lambda: any(float(e.get_attribute("data-value") or 0) == 2.0 for e in
                         d.find_elements(By.CSS_SELECTOR, '[data-metric="capacity"]')),
             "small's configured capacity (1 req/s x 2 replicas)")

    open_page(d, "anomalies")
    assert d.find_elements(By.CSS_SELECTOR, "table.anomalies")
    assert severe_logs(d) == []


def _table_rows(d) -> list[tuple[str, str]]:
    from selenium.webdriver.common.by import By

    return [(tr.get_attribute("data-request-id"), tr.find_elements(By.TAG_NAME, "td")[1].text)
            for tr in d.find_elements(By.CSS_SELECTOR, "table.requests tbody tr[data-request-id]")]


def test_requests_log_filters_paginates_and_opens_details(logged_in):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d, ledger = logged_in["driver"], logged_in["ledger"]
    open_page(d, "requests")
    newest = ledger.one("SELECT id FROM requests ORDER BY ts DESC, id DESC LIMIT 1")[0]
    rows = wait_for(lambda: (r := _table_rows(d)) and r[0][0] == newest and r,
                    "the newest request first")
    assert len(rows) == 50
    bob = ledger.one("SELECT COUNT(*) FROM requests WHERE user_id = 'bob'")[0]
    box = d.find_element(By.CSS_SELECTOR, '#requests-filters input[name="user"]')
    box.send_keys("bob", Keys.TAB)
    wait_for(lambda: (r := _table_rows(d)) and all(u == "bob" for _, u in r)
             and len(r) == min(50, bob), "the table filtered to bob")
    click(d, "//div[@class='pager']/button[contains(., 'older')]", By.XPATH)
    wait_for(lambda: "page 2" in d.find_element(By.CLASS_NAME, "pager").text, "page 2")
    wait_for(lambda: (r := _table_rows(d)) and all(u == "bob" for _, u in r)
             and len(r) == min(50, bob - 50), "the second page of bob's requests")
    box.clear()
    box.send_keys(Keys.TAB)
    # A request sent through the gateway: its details, without its prompt.
    mine = ledger.one("SELECT id FROM requests WHERE feature = 'support' ORDER BY ts DESC")[0]
    wait_for(lambda: any(i == mine for i, _ in _table_rows(d)), "the unfiltered log again")
    click(d, f'tr[data-request-id="{mine}"]')
    detail = wait_for(lambda: (e := d.find_element(By.ID, "request-detail")).is_displayed() and
                      mine in e.text and e, "the request's details")
    assert "stage timings" in detail.text.lower() and "prompt tokens" in detail.text
    assert "log_content is off" in detail.text
    assert SECRET_PROMPT not in d.find_element(By.TAG_NAME, "body").text


def test_a_key_created_in_the_ui_works_at_once_then_edit_and_revoke(logged_in):
    from selenium.webdriver.common.by import By

    d, gw, api = logged_in["driver"], logged_in["gw"], logged_in["api"]
    open_page(d, "keys")
    form = d.find_element(By.ID, "key-create-form")
    form.find_element(By.NAME, "user").send_keys("made-in-ui")
    form.find_element(By.NAME, "team").send_keys("core")
    form.find_element(By.NAME, "rpm").send_keys("100")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    secret_el = wait_for(lambda: d.find_element(By.ID, "new-key-secret"), "the new key")
    secret, key_id = secret_el.text, secret_el.get_attribute("data-key-id")
    assert secret.startswith("mk-" + key_id)
    r = chat(gw.url, secret, "hello from a key made in the browser")
    assert r.status_code == 200, r.text
    assert api.get(f"/admin/keys/{key_id}").json()["rpm"] == 100
    # Edit its limit, then revoke it: both through the page.
    wait_for(lambda: d.find_elements(By.CSS_SELECTOR, f'tr[data-key-id="{key_id}"]'), "its row")
    click(d, f'tr[data-key-id="{key_id}"] [data-action="edit"]')
    edit = wait_for(lambda: d.find_element(By.ID, "key-edit-form"), "the edit form")
    rpm = edit.find_element(By.NAME, "rpm")
    rpm.clear()
    rpm.send_keys("7")
    edit.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(lambda: api.get(f"/admin/keys/{key_id}").json()["rpm"] == 7, "rpm 7 saved")
    click(d, f'tr[data-key-id="{key_id}"] [data-action="revoke"]')
    wait_for(lambda: d.switch_to.alert, "the confirmation").accept()
    wait_for(lambda: api.get(f"/admin/keys/{key_id}").json()["status"] == "revoked", "revoked")
    wait_for(lambda: chat(gw.url, secret, "after revoke").status_code == 401,
             "the revoked key refused")
    assert severe_logs(d) == []


def test_the_session_cookie_needs_the_csrf_token_for_writes(logged_in):
    d, gw = logged_in["driver"], logged_in["gw"]
    c = d.get_cookie("margin_session")
    assert c["httpOnly"] is True and c["sameSite"] == "Strict" and c["path"] == "/"
    assert d.execute_script("return document.cookie") == ""  # script cannot read it
    with httpx.Client(base_url=gw.url, cookies={"margin_session": c["value"]},
                      timeout=30) as s:
        assert s.get("/admin/overview").status_code == 200
        refused = s.post("/admin/keys", json={"user": "csrf-victim"})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "csrf_token_invalid"
        token = s.get("/ui/session").json()["csrf_token"]
        assert s.post("/admin/keys", json={"user": "csrf-ok"},
                      headers={"x-csrf-token": token}).status_code == 201


def test_no_page_logged_a_console_error(logged_in):
    d = logged_in["driver"]
    for page in ("overview", "spend", "budgets", "requests", "capacity", "keys", "anomalies"):
        open_page(d, page)
        time.sleep(0.3)
    assert severe_logs(d) == []


def test_an_open_gateway_says_so_and_has_no_keys_page(env, tmp_path):
    from selenium.webdriver.common.by import By

    d = env["driver"]
    gw = GatewayProcess(tmp_path, {
        "models": [fake_model("small", "http://127.0.0.1:9")],
        "ledger": {"url": str(tmp_path / "open.db")}}, env={"MARGIN_MASTER_KEY": ""}).start()
    try:
        d.get(gw.url + "/ui")
        banner = wait_for(lambda: (b := d.find_element(By.ID, "banner")).is_displayed() and b,
                          "the open-gateway banner")
        assert "No master key is set" in banner.text and "loopback" in banner.text
        assert not d.find_element(By.ID, "login").is_displayed()
        open_page(d, "overview")
        assert metric(d, "requests") == 0
        open_page(d, "keys")
        assert "need a master key" in d.find_element(By.ID, "page").text
        assert severe_logs(d) == []
    finally:
        gw.stop()


def test_a_viewer_key_logs_in_reads_the_pages_and_sees_no_keys_page(env):
    from selenium.webdriver.common.by import By

    d, gw, api = env["driver"], env["gw"], env["api"]
    viewer = api.post("/admin/keys", json={"user": "finance", "role": "viewer"}).json()["key"]
    plain = api.post("/admin/keys", json={"user": "someone"}).json()["key"]
    d.get(gw.url + "/ui")
    d.delete_all_cookies()
    d.get(gw.url + "/ui")
    wait_for(lambda: d.find_element(By.ID, "login").is_displayed(), "the login form")
    # A plain key is told why it cannot log in.
    d.find_element(By.ID, "login-key").send_keys(plain)
    d.find_element(By.CSS_SELECTOR, "#login-form button").click()
    err = wait_for(lambda: (e := d.find_element(By.ID, "login-error")).is_displayed() and e,
                   "the login error")
    assert "viewer or admin role" in err.text
    d.find_element(By.ID, "login-key").clear()
    d.find_element(By.ID, "login-key").send_keys(viewer)
    d.find_element(By.CSS_SELECTOR, "#login-form button").click()
    open_page(d, "overview")
    now = float(d.find_element(By.ID, "page").get_attribute("data-generated-at"))
    assert metric(d, "requests") == env["ledger"].one(
        "SELECT COUNT(*) FROM requests WHERE ts >= ? AND ts < ?", now - 30 * DAY, now)[0]
    assert not d.find_element(By.CSS_SELECTOR, '#nav a[href="#keys"]').is_displayed()
    open_page(d, "spend")
    d.execute_script("location.hash = '#keys'")  # typed by hand: the overview instead
    wait_for(lambda: d.find_element(By.ID, "page").get_attribute("data-page") == "overview",
             "the overview instead of keys")
    # The refused login is the one error the browser logged (its 403 response).
    assert all("/ui/login" in e["message"] and "403" in e["message"] for e in severe_logs(d))
