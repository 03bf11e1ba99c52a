"""Screenshots of every console page for docs/console.md, taken with Debian's headless
Chromium against a real ``margin serve`` on a ledger built the way ``margin bench ledger``
builds one (Pareto users, daily and weekly cycles, bursts, a few bots), plus a few requests
sent through the gateway.

    python docs/console_screenshots.py [--rows 200000] [--days 35] [--out docs/images]

Needs chromium, chromium-driver and selenium (the dev extra); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import yaml

from margin.bench.ledger import MODELS, Shapes, build
from margin.procs import free_port, stop, wait_http

PAGES = ("overview", "spend", "budgets", "requests", "capacity", "keys", "anomalies")
WIDTH, MIN_HEIGHT, MAX_HEIGHT = 1280, 900, 1800


def gateway_config(upstream: str, ledger: str) -> dict:
    models = [{"name": name, "provider": "openai", "api_base": upstream + "/v1",
               "input_cost_per_mtok": p_in, "output_cost_per_mtok": p_out}
              for name, p_in, p_out, _, _ in MODELS]
    return {
        "models": models,
        "ledger": {"url": ledger},
        "server": {"drain_delay_s": 0},
        "limits": {"budgets": [
            # team-00 and feature-00 run out before the month ends; team-01 does not.
            {"scope": "team", "name": "team-00", "usd": 30, "period": "month"},
            {"scope": "team", "name": "team-01", "usd": 100, "period": "month"},
            {"scope": "feature", "name": "feature-00", "usd": 60, "period": "month"}]},
        "capacity": {"gpt-4o-mini": {"rpm": 4}, "gpt-4o": {"replica_rps": 0.02, "replicas": 2},
                     "local-llama": {"replica_rps": 0.01, "replicas": 1}},
    }


def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={WIDTH},{MIN_HEIGHT}", "--hide-scrollbars"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"),
                            options=opts)


def wait(check, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            found = check()
            if found:
                return found
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit("the console did not show what was waited for")


def shoot(d, path: Path) -> None:
    height = d.execute_script("return document.documentElement.scrollHeight")
    d.set_window_size(WIDTH, max(MIN_HEIGHT, min(MAX_HEIGHT, height)))
    time.sleep(0.3)
    d.save_screenshot(str(path))
    d.set_window_size(WIDTH, MIN_HEIGHT)
    print("wrote", path)


def open_page(d, name: str) -> None:
    from selenium.webdriver.common.by import By

    d.execute_script(f"location.hash = '#{name}'")
    wait(lambda: d.find_element(By.ID, "page").get_attribute("data-page") == name
         and "updated" in d.find_element(By.ID, "updated").text)
    time.sleep(0.3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--days", type=int, default=35)
    ap.add_argument("--out", default=str(Path(__file__).parent / "images"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    master = "docs-" + uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="margin-console-shots-") as tmp_name:
        tmp = Path(tmp_name)
        ledger = str(tmp / "ledger.db")
        print(f"building {args.rows:,} rows over {args.days} days …")
        build(ledger, Shapes(args.rows, args.days, time.time(), seed=17))
        up_port, gw_port = free_port(), free_port()
        upstream = subprocess.Popen([sys.executable, "-m", "margin.bench.fake_upstream",
                                     "--port", str(up_port)], stdout=subprocess.DEVNULL)
        cfg = tmp / "margin.yaml"
        cfg.write_text(yaml.safe_dump(gateway_config(f"http://127.0.0.1:{up_port}",
                                                     ledger)))
        gw = subprocess.Popen([sys.executable, "-m", "margin.cli.main", "serve", "--config",
                               str(cfg), "--port", str(gw_port)], cwd=tmp,
                              env={**os.environ, "MARGIN_MASTER_KEY": master},
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{gw_port}"
            wait_http(url + "/healthz", gw, 120)
            api = httpx.Client(base_url=url, timeout=60,
                               headers={"authorization": f"Bearer {master}"})
            for user, team, budget in (("user-00000", "team-00", 300.0),
                                       ("support-bot", "team-03", None),
                                       ("ci-runner", "team-01", 50.0)):
                k = api.post("/admin/keys", json={
                    "user": user, "team": team, "name": f"{user} key", "rpm": 600,
                    **({"budget_usd": budget, "budget_period": "month"} if budget else {})}
                ).json()
                for i in range(8):
                    httpx.post(url + "/v1/chat/completions", timeout=30, headers={
                        "authorization": f"Bearer {k['key']}", "x-margin-feature": "docs"},
                        json={"model": "gpt-4o-mini", "max_tokens": 16, "messages": [
                            {"role": "user", "content": f"question {i % 5} from {user}"}]})
            time.sleep(1.0)  # the ledger writer's next flush
            shots(driver(), url, master, out)
        finally:
            stop(gw)
            stop(upstream)


def shots(d, url: str, master: str, out: Path) -> None:
    from selenium.webdriver.common.by import By

    try:
        d.get(url + "/ui")
        wait(lambda: d.find_element(By.ID, "login").is_displayed())
        shoot(d, out / "console-login.png")
        d.find_element(By.ID, "login-key").send_keys(master)
        d.find_element(By.CSS_SELECTOR, "#login-form button").click()
        for page in PAGES:
            open_page(d, page)
            if page == "requests":
                d.find_element(By.CSS_SELECTOR, "table.requests tbody tr[data-request-id]").click()
                wait(lambda: d.find_element(By.ID, "request-detail").is_displayed())
            if page == "keys":
                form = d.find_element(By.ID, "key-create-form")
                form.find_element(By.NAME, "user").send_keys("new-analyst")
                form.find_element(By.NAME, "team").send_keys("team-02")
                form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
                wait(lambda: d.find_element(By.ID, "new-key-secret"))
                time.sleep(0.5)
            shoot(d, out / f"console-{page}.png")
    finally:
        d.quit()


if __name__ == "__main__":
    main()
