"""Reproduces the worked example of docs/quality.md: shadow evaluation measured on two
labelled data sets whose truth is known, through a real gateway process.

    PYTHONPATH=src .venv/bin/python docs/quality_example.py [--pairs 400] [--gsm8k 200]

Part A, the semantic cache (exact judge, ``sample_rate`` 0.25). Quora question pairs
(``/work/shared/data/semantic-cache/qqp_pairs_tune.jsonl``): each question's class is its
connected component under the label-1 pairs; a fake upstream answers every question with its
class's answer. ``text_a`` of each pair is asked first (a miss, stored), then ``text_b``. A
hit is right exactly when the stored answer is the class answer of ``text_b``: the exact
judge's agreement on the sampled hits estimates the cache's strict precision, which the
script also computes on *every* hit from the ledger (``ledger.log_content`` is on).

Part B, a route (embedding judge, ``sample_rate`` 1). RouteLLM's GSM8K rows
(``/work/shared/data/routing/routellm_gsm8k_mmlu_tune.jsonl``) carry the real answers of a
weak model (Mixtral-8x7B) and a strong one (GPT-4): the fake upstream answers each prompt
with the recorded answer of the tier asked. The rules router sends the prompts it finds
easy to the weak tier; each is shadowed on the strong tier and the two real answers are
compared by MiniLM cosine. The script sets the judge's verdicts beside the data set's
correctness labels: how well an embedding judge stands for "the cheap answer is as good".

Fake upstreams stand for the paid providers; everything else (gateway, semantic cache,
router, shadow runner, judges, ledger, ``margin quality``) is the real thing.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
import yaml

from margin.bench.fake_upstream import FakeUpstream
from margin.procs import free_port, stop, wait_http

DATA = Path("/work/shared/data")


def classes(pairs: list[dict[str, Any]]) -> dict[str, int]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in pairs:
        a, b = find(p["text_a"]), find(p["text_b"])
        if p["label"] == 1 and a != b:
            parent[a] = b
    roots: dict[str, int] = {}
    return {q: roots.setdefault(find(q), len(roots)) for q in list(parent)}


def serve_in_thread(app: Any) -> str:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}"


def gateway(config: dict[str, Any], workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    path = workdir / f"margin-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "margin.cli.main", "serve", "--config",
                             str(path), "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc, 180)
    return proc, url


def ask(client: Any, url: str, model: str, text: str) -> Any:
    r = client.post(url + "/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": text}]})
    r.raise_for_status()
    return r


def shadow_outcomes(client: Any, gw: str) -> dict[str, float]:
    """The gateway's ``margin_shadow_runs_total`` by outcome (busy and capped included)."""
    out: dict[str, float] = {}
    for line in client.get(gw + "/metrics").text.splitlines():
        if line.startswith("margin_shadow_runs_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            out[outcome] = out.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def quality(db: str) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "margin.cli.main", "quality", "--db", db,
                          "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def wait_quiet(db: str, quiet_s: float = 3.0) -> None:
    last, since = -1, time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.5)
        try:
            n = sqlite3.connect(db).execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        except sqlite3.Error:
            n = -1
        if n != last:
            last, since = n, time.monotonic()


def models(url: str) -> list[dict[str, Any]]:
    # prices of a small and a large hosted model (USD per million tokens)
    return [{"name": "weak", "provider": "openai", "api_base": url + "/v1",
             "input_cost_per_mtok": 0.15, "output_cost_per_mtok": 0.60},
            {"name": "strong", "provider": "openai", "api_base": url + "/v1",
             "input_cost_per_mtok": 2.50, "output_cost_per_mtok": 10.0}]


def part_a(n_pairs: int, workdir: Path, client: Any, semantic: dict[str, Any],
           sample_rate: float) -> dict[str, Any]:
    pairs = [json.loads(line) for line in
             (DATA / "semantic-cache/qqp_pairs_tune.jsonl").read_text().split("\n") if line]
    cls = classes(pairs)
    rng = random.Random(16)
    picked = rng.sample(pairs, n_pairs)
    entries = {p["text_a"] for p in picked}
    # a query identical to an entry is the exact cache's hit, not the semantic cache's
    picked = [p for p in picked if p["text_b"] not in entries]

    def answer(q: str) -> str:
        return f"Answer {cls.get(q, -1)}: see the topic page."

    url = serve_in_thread(FakeUpstream(
        answer_fn=lambda req: answer(str(req["messages"][-1]["content"]))))
    db = str(workdir / f"a-{len(list(workdir.iterdir()))}.db")
    proc, gw = gateway({
        "models": models(url), "ledger": {"url": db, "flush_interval_ms": 50},
        "cache": {"semantic": {"enabled": True, **semantic}},
        "quality": {"shadow": {"enabled": True, "sample_rate": sample_rate,
                               "max_share_of_savings": 5.0, "default_max_tokens": 64,
                               "judge": {"kind": "exact"}}},
    }, workdir)
    hits = right = 0
    try:
        for p in picked:
            ask(client, gw, "weak", p["text_a"])
        for p in picked:
            r = ask(client, gw, "weak", p["text_b"])
            if r.headers["x-margin-cache"] == "semantic":
                hits += 1
                right += r.json()["choices"][0]["message"]["content"] == answer(p["text_b"])
        wait_quiet(db)
        outcomes = shadow_outcomes(client, gw)
    finally:
        stop(proc)
    return {"settings": semantic, "sample_rate": sample_rate, "queries": len(picked),
            "hits": hits, "true_precision_all_hits": right / hits if hits else None,
            "shadow_outcomes": outcomes, "report": quality(db)}


def part_b(n_rows: int, workdir: Path, client: Any) -> dict[str, Any]:
    rows = [json.loads(line) for line in
            (DATA / "routing/routellm_gsm8k_mmlu_tune.jsonl").read_text().split("\n") if line]
    rows = [r for r in rows if r["source"] == "gsm8k" and r.get("weak_response")
            and r.get("strong_response")]
    rows = random.Random(16).sample(rows, n_rows)
    by_prompt = {r["prompt"]: r for r in rows}

    def answer(req: dict[str, Any]) -> str:
        row = by_prompt[str(req["messages"][-1]["content"])]
        return row["weak_response" if req["model"] == "weak" else "strong_response"]

    url = serve_in_thread(FakeUpstream(answer_fn=answer))
    db = str(workdir / "b.db")
    proc, gw = gateway({
        "models": models(url), "ledger": {"url": db, "flush_interval_ms": 50,
                                          "log_content": True},
        "routes": [{"name": "auto", "tiers": ["weak", "strong"], "router": {"kind": "rules"}}],
        "quality": {"shadow": {"enabled": True, "sample_rate": 1.0, "max_share_of_savings": 5.0,
                               "default_max_tokens": 400,
                               # a batch run: every sampled shadow waits its turn on MiniLM
                               # instead of being skipped as busy (live traffic: keep 4)
                               "max_concurrent": 256, "timeout_s": 600,
                               "judge": {"kind": "embedding", "threshold": 0.9}}},
    }, workdir)
    try:
        for r in rows:
            ask(client, gw, "auto", r["prompt"])
        wait_quiet(db)
        outcomes = shadow_outcomes(client, gw)
    finally:
        stop(proc)
    con = sqlite3.connect(db)
    joined = con.execute(
        "SELECT o.prompt, s.agreement, s.judge_score FROM requests s "
        "JOIN requests o ON o.id = s.shadow_of WHERE s.agreement IS NOT NULL").fetchall()
    confusion = {"agree_weak_right": 0, "agree_weak_wrong": 0, "disagree_weak_right": 0,
                 "disagree_weak_wrong": 0}
    scores: dict[bool, list[float]] = {True: [], False: []}
    for prompt, agreement, score in joined:
        row = by_prompt[json.loads(prompt)[-1]["content"]]
        # "as good": the weak answer is right, or both are wrong
        good = row["weak_correct"] or not row["strong_correct"]
        key = ("agree" if agreement else "disagree") + ("_weak_right" if good else "_weak_wrong")
        confusion[key] += 1
        scores[bool(good)].append(score)
    judged = len(joined)
    as_good = confusion["agree_weak_right"] + confusion["disagree_weak_right"]
    return {"prompts": len(rows), "judged": judged, "true_as_good": as_good / max(judged, 1),
            "confusion": confusion, "shadow_outcomes": outcomes,
            "mean_cosine_weak_as_good": round(sum(scores[True]) / max(len(scores[True]), 1), 4),
            "mean_cosine_weak_worse": round(sum(scores[False]) / max(len(scores[False]), 1), 4),
            "report": quality(db)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=400)
    ap.add_argument("--gsm8k", type=int, default=200)
    args = ap.parse_args()
    import httpx

    with tempfile.TemporaryDirectory() as tmp, httpx.Client(timeout=60) as client:
        t0 = time.time()
        shipped = part_a(args.pairs, Path(tmp), client, {}, 1.0)
        loose = part_a(args.pairs, Path(tmp), client, {"verifier": False, "threshold": 0.8},
                       0.5)
        b = part_b(args.gsm8k, Path(tmp), client)
        print(json.dumps({"semantic_cache_shipped": shipped, "semantic_cache_loose": loose,
                          "route": b,
                          "seconds": round(time.time() - t0, 1)}, indent=2))


if __name__ == "__main__":
    main()
