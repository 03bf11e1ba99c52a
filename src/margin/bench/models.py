"""``margin bench models``: the local models' variants, measured on this machine.

MiniLM (embeddings): FP32, dynamic INT8 (margin's selective scheme and the naive one),
``torch.compile``, ONNX Runtime FP32 and INT8. SmolLM2 (generation): the shipped Q4_1 GGUF
and what llama.cpp can requantize it to. Each variant runs in a fresh process so that its
memory is its own (the ONNX workers never import torch); the parent compares quality with
the baseline:

- embeddings: mean/min cosine to the FP32 vectors, and the semantic-cache decision agreement
  on QQP pairs (same hit/miss at ``--threshold`` as FP32);
- generation: greedy answers identical to the Q4_1 ones, and the shared word prefix.

Self-hosted cost per 1k requests and per 1M tokens follows from the measured throughput and
``--cpu-hour-usd``. ONNX exports and requantized GGUF files are built here, from the bundled
weights, into ``--cache-dir`` (default ``~/.cache/margin``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import orjson

from margin.bench.batching import DEFAULT_CPU_HOUR_USD, load_note, load_questions
from margin.bench.report import header, write_section

_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "semantic-cache"
DEFAULT_GPU_HOUR_USD = 2.50  # an on-demand H100 at a GPU cloud, 2025; unused without a GPU

# name → (EmbedderVariant kwargs, config line that selects it, note)
MINILM = {
    "torch-fp32": ({"runtime": "torch"}, "runtime: torch", "baseline"),
    "torch-int8": ({"runtime": "torch", "quantize": "int8"}, "runtime: torch + quantize: int8",
                   "per-channel INT8 Linear, FFN down-projections kept FP32"),
    "torch-int8-naive": ({"runtime": "torch", "quantize": "int8"}, "–",
                         "every Linear INT8, per-tensor"),
    "torch-compiled": ({"runtime": "torch", "compile": True}, "compile: true",
                       "torch.compile(dynamic=True)"),
    "onnx-fp32": ({"runtime": "onnx"}, "(default: runtime auto)",
                  "ONNX Runtime, exported here; what runtime: auto picks when installed"),
    "onnx-int8": ({"runtime": "onnx", "quantize": "int8"}, "quantize: int8",
                  "ORT dynamic INT8, per-channel"),
}
GGUF_TYPES = ("Q4_0", "Q8_0", "F16")
PROMPTS = [
    "What is the capital of France?", "Give me three tips for sleeping better.",
    "Write one sentence about the sea.", "What is 12 times 7?",
    "Explain what a database index is in one sentence.", "Name two primary colours.",
    "How do I boil an egg?", "Translate 'good morning' into Spanish.",
]


# -- worker side (a fresh process per variant) ----------------------------------------------
def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _minilm_worker(job: dict) -> dict:
    from margin.embedding.minilm import EmbedderVariant, LocalEmbedder, quantize_int8

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    name = job["name"]
    kwargs = MINILM[name][0]
    if name == "torch-int8-naive":
        emb = LocalEmbedder(variant=EmbedderVariant(runtime="torch"))
        emb._model = quantize_int8(emb._model, naive=True)
        emb._run = emb._torch_runner(EmbedderVariant(runtime="torch"))  # the naive INT8 module
    else:
        emb = LocalEmbedder(variant=EmbedderVariant(**kwargs), onnx_dir=job["onnx_dir"])
    load_s = time.perf_counter() - t0
    texts: list[str] = job["texts"]
    t0 = time.perf_counter()
    for b in (1, *job["batch_sizes"]):  # warm-up (and, compiled, the compilation)
        emb.encode(texts[:b])
    first_s = time.perf_counter() - t0
    lat = []
    t_end = time.perf_counter() + job["seconds"]
    i = 0
    while time.perf_counter() < t_end or len(lat) < 10:
        t0 = time.perf_counter()
        emb.encode([texts[i % len(texts)]])
        lat.append(time.perf_counter() - t0)
        i += 1
    lat.sort()
    through: dict[int, float] = {}
    for b in job["batch_sizes"]:
        n_done, busy = 0, 0.0
        t_end = time.perf_counter() + job["seconds"]
        while time.perf_counter() < t_end or n_done < 2 * b:
            chunk = [texts[(i + k) % len(texts)] for k in range(b)]
            i += b
            t0 = time.perf_counter()
            emb.encode(chunk)
            busy += time.perf_counter() - t0
            n_done += b
        through[b] = n_done / busy
    vectors = emb.encode(job["quality_texts"])
    np.save(job["npy_out"], vectors)
    weights_mb = (emb.onnx_path.stat().st_size / 2**20 if emb.onnx_path is not None
                  else _torch_weights_mb(emb.module))
    return {"name": name, "load_s": load_s, "first_calls_s": first_s,
            "p50_ms": 1000 * lat[len(lat) // 2], "throughput": through,
            "rss_mb": _rss_mb(), "rss_start_mb": rss0, "weights_mb": weights_mb,
            "torch_loaded": "torch" in sys.modules}


def _torch_weights_mb(module: Any) -> float:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell() / 2**20


def _gguf_worker(job: dict) -> dict:
    from llama_cpp import Llama

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    llm = Llama(model_path=job["path"], n_ctx=512, n_threads=os.cpu_count() or 1,
                verbose=False)
    load_s = time.perf_counter() - t0
    llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                               temperature=0)
    answers, lat, tokens = [], [], 0
    for p in job["prompts"]:
        t0 = time.perf_counter()
        out = llm.create_chat_completion(messages=[{"role": "user", "content": p}],
                                         max_tokens=job["max_tokens"], temperature=0)
        lat.append(time.perf_counter() - t0)
        answers.append(out["choices"][0]["message"]["content"])
        tokens += out["usage"]["completion_tokens"]
    lat_sorted = sorted(lat)
    return {"name": job["name"], "load_s": load_s, "rss_mb": _rss_mb(), "rss_start_mb": rss0,
            "weights_mb": Path(job["path"]).stat().st_size / 2**20,
            "p50_ms": 1000 * lat_sorted[len(lat) // 2], "tokens_per_s": tokens / sum(lat),
            "mean_latency_s": sum(lat) / len(lat), "answers": answers,
            "completion_tokens": tokens,
            "parallel": _parallel_decode(llm, job) if job.get("parallel") else {}}


def _parallel_decode(llm: Any, job: dict) -> dict[int, float]:
    """Generated tokens/s when the prompts are decoded n at a time in one context
    (``n_parallel``), greedy, the same prompts and token budget as above."""
    from margin.upstreams.llamacpp import chat_formatter, chat_tokens
    from margin.upstreams.llamacpp_batch import BatchedGenerator, GenJob

    fmt = chat_formatter(llm)
    jobs = []
    for p in job["prompts"]:
        tokens, stop = chat_tokens(llm, fmt, [{"role": "user", "content": p}])
        jobs.append(GenJob(tokens, job["max_tokens"], temperature=0.0, stop=tuple(stop)))
    out: dict[int, float] = {}
    for n in job["parallel"]:
        gen = BatchedGenerator(llm, n, 512, os.cpu_count() or 1)
        gen.generate(jobs[:n])  # warm-up
        t0, generated = time.perf_counter(), 0
        for i in range(0, len(jobs), n):
            generated += sum(r.completion_tokens for r in gen.generate(jobs[i:i + n]))
        out[n] = generated / (time.perf_counter() - t0)
        gen.close()
    return out


def worker_main() -> None:
    job = orjson.loads(sys.stdin.read())
    if job["kind"] == "requantize":
        result: Any = {"name": job["name"],
                       "built": requantize(Path(job["src"]), Path(job["dst"]), job["ftype"])}
    elif job["kind"] == "minilm":
        result = _minilm_worker(job)
    else:
        result = _gguf_worker(job)
    sys.stdout.write("RESULT " + orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS).decode()
                     + "\n")


def _run_worker(job: dict, timeout_s: float = 900) -> dict:
    code = "from margin.bench.models import worker_main; worker_main()"
    proc = subprocess.run([sys.executable, "-c", code], input=orjson.dumps(job),
                          capture_output=True, timeout=timeout_s,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    for line in proc.stdout.decode().splitlines():
        if line.startswith("RESULT "):
            return orjson.loads(line[len("RESULT "):])
    tail = proc.stderr.decode(errors="replace")[-1500:]
    raise click.ClickException(f"variant {job.get('name')} failed:\n{tail}")


# -- parent side ---------------------------------------------------------------------------
def _prepare_onnx(onnx_dir: Path) -> float:
    """Export FP32 and INT8 ONNX once (a separate process, so ONNX workers never load torch)."""
    code = ("import sys; from pathlib import Path; "
            "from margin.embedding.minilm import LocalEmbedder, EmbedderVariant; from margin.embedding.onnx_minilm import ensure_onnx;"
            "e = LocalEmbedder(variant=EmbedderVariant(runtime='torch')); ensure_onnx(e._model, e.path, 'int8', Path(sys.argv[1]))")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(onnx_dir)], capture_output=True)
    if proc.returncode != 0:
        raise click.ClickException("ONNX export failed:\n"
                                   + proc.stderr.decode(errors="replace")[-1500:])
    return time.perf_counter() - t0


def requantize(src: Path, dst: Path, ftype: str) -> float | str:
    """llama.cpp's quantizer from an already-quantized file: it refuses unless requantizing is
    allowed explicitly (each tensor is dequantized, then quantized again)."""
    import llama_cpp

    if dst.exists():
        return 0.0
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = os.cpu_count() or 1
    params.allow_requantize = True
    tmp = dst.with_suffix(".tmp")
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0:
        tmp.unlink(missing_ok=True)
        return f"llama.cpp refused (rc {rc})"
    tmp.replace(dst)
    return time.perf_counter() - t0


def _pairs(path: Path, n: int) -> list[tuple[str, str, int]]:
    out = []
    if path.exists():
        with path.open() as f:
            for line in f:
                row = json.loads(line)
                out.append((row["text_a"], row["text_b"], int(row["label"])))
                if len(out) >= n:
                    break
    return out


def _cost(hour_usd: float, per_s: float) -> float:
    return hour_usd / 3600 / per_s if per_s > 0 else float("nan")


def _agreement(ref: np.ndarray, vec: np.ndarray, n_pairs: int, threshold: float
               ) -> tuple[float, float, float, float]:
    """Mean and min cosine to FP32; share of pairs with the same cache decision; hit rate."""
    cos = (ref * vec).sum(axis=1)
    sim_ref = (ref[:n_pairs] * ref[n_pairs:]).sum(axis=1)
    sim = (vec[:n_pairs] * vec[n_pairs:]).sum(axis=1)
    same = float(((sim_ref >= threshold) == (sim >= threshold)).mean())
    return float(cos.mean()), float(cos.min()), same, float((sim >= threshold).mean())


def _prefix_share(a: str, b: str) -> float:
    wa, wb = a.split(), b.split()
    n = 0
    for x, y in zip(wa, wb):
        if x != y:
            break
        n += 1
    return n / max(len(wa), len(wb), 1)


def render_minilm(rows: list[dict], quality: dict[str, tuple], tokens: float, hour: float,
                  threshold: float, n_pairs: int, export_s: float | None) -> list[str]:
    lines = ["**MiniLM (all-MiniLM-L6-v2) embeddings**: memory = resident set of a fresh "
             "process holding only that variant (the ONNX ones never import torch); P50 at "
             "batch 1; throughput at the best batch; quality against FP32 on "
             f"{2 * n_pairs} QQP questions, and the semantic-cache decision (cosine ≥ "
             f"{threshold:g}) on {n_pairs} QQP pairs.", "",
             "| variant | config | weights MB | process RSS MB | load s | first calls s | "
             "P50 batch 1 ms | sentences/s (best batch) | mean cos | min cos | "
             "same cache decision | hit rate | USD / 1k req (batch 1) | USD / 1k req (best) | "
             "USD / 1M tokens (best) |", "|" + "---|" * 15]
    for r in rows:
        best_b = max(r["throughput"], key=lambda b: r["throughput"][b])
        best = r["throughput"][best_b]
        mean_cos, min_cos, same, hit = quality[r["name"]]
        per_req_b1 = hour / 3600 * r["p50_ms"] / 1000
        lines.append(
            f"| {r['name']} | {MINILM[r['name']][1]} | {r['weights_mb']:.0f} | "
            f"{r['rss_mb']:.0f} | {r['load_s']:.1f} | {r['first_calls_s']:.1f} | "
            f"{r['p50_ms']:.1f} | {best:.0f} (b={best_b}) | {mean_cos:.4f} | {min_cos:.3f} | "
            f"{100 * same:.1f} % | {100 * hit:.1f} % | {1000 * per_req_b1:.6f} | "
            f"{1000 * _cost(hour, best):.6f} | {1e6 * _cost(hour, best * tokens):.4f} |")
    lines += ["", "Notes: " + "; ".join(f"{k}: {v[2]}" for k, v in MINILM.items()) + "."]
    if export_s is not None:
        lines.append(f"ONNX export + INT8 quantization from the bundled weights took "
                     f"{export_s:.0f} s (once; cached).")
    return lines


def render_gguf(rows: list[dict], built: dict[str, Any], hour: float, max_tokens: int
                ) -> list[str]:
    ref = next(r for r in rows if r["name"] == "Q4_1")
    lines = [f"**SmolLM2-135M-Instruct (llama.cpp)**: {len(PROMPTS)} chat prompts, greedy, up "
             f"to {max_tokens} tokens each; P50 = one request end to end; tokens/s = generated "
             "tokens over the time spent; agreement = greedy answers identical to Q4_1's.", "",
             "| GGUF | how | file MB | process RSS MB | P50 ms | tokens/s | identical answers | "
             "shared word prefix | USD / 1k req | USD / 1M tokens |", "|" + "---|" * 10]
    for r in rows:
        same = sum(a == b for a, b in zip(r["answers"], ref["answers"])) / len(ref["answers"])
        prefix = sum(_prefix_share(a, b) for a, b in zip(r["answers"], ref["answers"])) / len(
            ref["answers"])
        how = "shipped" if r["name"] == "Q4_1" else f"requantized from Q4_1 in {built[r['name']]:.1f} s" \
            if isinstance(built.get(r["name"]), float) and built[r["name"]] else "requantized from Q4_1 (cached)"
        lines.append(f"| {r['name']} | {how} | {r['weights_mb']:.0f} | {r['rss_mb']:.0f} | "
                     f"{r['p50_ms']:.0f} | {r['tokens_per_s']:.0f} | {100 * same:.0f} % | "
                     f"{100 * prefix:.0f} % | {1000 * hour / 3600 * r['mean_latency_s']:.6f} | "
                     f"{1e6 * _cost(hour, r['tokens_per_s']):.4f} |")
    refused = {k: v for k, v in built.items() if isinstance(v, str)}
    lines += ["", "llama.cpp refuses to requantize an already-quantized file unless "
              "`allow_requantize` is set; with it, each tensor is dequantized from Q4_1 and "
              "quantized again. So Q8_0/F16 cannot be more accurate than the Q4_1 they come from "
              "(they only spend more memory to represent the same values); Q4_0 compounds two "
              "roundings. Greedy answers still differ from Q4_1's because each weight type runs "
              "its own kernel (the Q4/Q8 kernels quantize activations to 8 bits as well, F16 "
              "does not), and a 135M model's greedy path flips on small logit changes. A "
              "better-quality file needs the original FP16 weights, which are not bundled (and "
              "nothing here downloads them). Any of these files is selectable with the model's "
              "`path:`."
              + (f" Refused here: {refused}." if refused else "")]
    par = {int(k): v for k, v in ref.get("parallel", {}).items()}
    if par:
        base = par[min(par)]
        lines += ["", "Several requests decoded together (`n_parallel`, the batcher's lane for "
                  "this model), Q4_1, the same prompts greedy, n sequences per decode:", "",
                  "| sequences per decode | generated tokens/s | gain |", "|---|---|---|"]
        lines += [f"| {n} | {v:.0f} | {v / base:.2f}× |" for n, v in sorted(par.items())]
        top = max(par)
        lines += ["", f"At {top} sequences per decode the model generates {par[top] / base:.2f}× "
                  "the tokens per second of one at a time. `n_parallel` stays off (1) by default: "
                  "the batched kernels round differently, so a greedy answer can differ from the "
                  "one-at-a-time answer, and the context holds n_parallel × n_ctx KV cells."]
    return lines


@click.command("models")
@click.option("--variants", default=",".join(MINILM), show_default=True,
              help="MiniLM variants to run")
@click.option("--gguf/--no-gguf", default=True, show_default=True, help="SmolLM2 variants too")
@click.option("--seconds", default=1.5, show_default=True, type=click.FloatRange(0.2),
              help="seconds per latency / throughput measurement")
@click.option("--batch-sizes", default="8,16,32,64", show_default=True)
@click.option("--pairs", "pairs_path", type=click.Path(dir_okay=False, path_type=Path),
              default=_DATA / "qqp_pairs_tune.jsonl", show_default=True)
@click.option("--n-pairs", default=500, show_default=True, type=click.IntRange(10))
@click.option("--threshold", default=0.85, show_default=True, type=click.FloatRange(0, 1),
              help="semantic-cache cosine threshold for the decision agreement")
@click.option("--max-tokens", default=32, show_default=True, type=click.IntRange(1, 256))
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where ONNX / GGUF files are built [default: $MARGIN_CACHE_DIR or "
                   "~/.cache/margin]")
@click.option("--cpu-hour-usd", default=DEFAULT_CPU_HOUR_USD, show_default=True,
              type=click.FloatRange(0), help="price of this machine per hour")
@click.option("--gpu-hour-usd", default=DEFAULT_GPU_HOUR_USD, show_default=True,
              type=click.FloatRange(0), help="price of a GPU per hour (GPU columns only)")
@click.option("--out", default="docs/benchmarks.md", show_default=True,
              help="markdown file to update ('-' to only print)")
@click.option("--json", "as_json", is_flag=True, help="print the raw results as JSON")
def models(variants: str, gguf: bool, seconds: float, batch_sizes: str, pairs_path: Path,
           n_pairs: int, threshold: float, max_tokens: int, cache_dir: Path | None,
           cpu_hour_usd: float, gpu_hour_usd: float, out: str, as_json: bool) -> None:
    """Memory, latency, throughput, quality and cost of the local models' variants."""
    import importlib.util

    from margin.embedding.onnx_minilm import cache_dir as default_cache

    names = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in MINILM]
    if unknown:
        raise click.BadParameter(f"unknown variants {unknown}; known: {list(MINILM)}",
                                 param_hint="--variants")
    try:
        sizes = [int(x) for x in batch_sizes.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter("expected comma-separated integers",
                                 param_hint="--batch-sizes") from None
    if importlib.util.find_spec("sentence_transformers") is None:
        raise click.UsageError("needs the local extra: pip install 'margin[local]'")
    if any(n.startswith("onnx") for n in names) and importlib.util.find_spec("onnxruntime") is None:
        click.echo("onnxruntime not installed: skipping the ONNX variants "
                   "(pip install onnxruntime onnx)", err=True)
        names = [n for n in names if not n.startswith("onnx")]
    if "torch-fp32" not in names:
        names.insert(0, "torch-fp32")
    root = cache_dir or default_cache()
    log = lambda msg: click.echo(msg, err=True)  # noqa: E731
    load_before = load_note()
    pairs = _pairs(pairs_path, n_pairs)
    texts, source = load_questions(pairs_path)
    if not pairs:  # no data: pairs of generated questions (quality columns less meaningful)
        pairs = [(texts[2 * i], texts[2 * i + 1], 0) for i in range(n_pairs)]
    quality_texts = [a for a, _, _ in pairs] + [b for _, b, _ in pairs]
    export_s = None
    if any(n.startswith("onnx") for n in names):
        log("exporting ONNX (once) …")
        export_s = _prepare_onnx(root / "onnx")
    tmp = Path(tempfile.mkdtemp(prefix="margin-bench-models-"))
    rows, quality = [], {}
    for name in names:
        log(f"MiniLM {name} …")
        r = _run_worker({"kind": "minilm", "name": name, "texts": texts[:512],
                         "quality_texts": quality_texts, "batch_sizes": sizes,
                         "seconds": seconds, "onnx_dir": str(root / "onnx"),
                         "npy_out": str(tmp / f"{name}.npy")})
        r["throughput"] = {int(k): v for k, v in r["throughput"].items()}
        rows.append(r)
        log(f"  p50 {r['p50_ms']:.1f} ms, best {max(r['throughput'].values()):.0f}/s, "
            f"rss {r['rss_mb']:.0f} MB")
    ref = np.load(tmp / "torch-fp32.npy")
    for r in rows:
        quality[r["name"]] = _agreement(ref, np.load(tmp / f"{r['name']}.npy"), len(pairs),
                                        threshold)
    from margin.embedding.minilm import _load_tokenizer, bundled_minilm_path

    tok = _load_tokenizer(bundled_minilm_path(), 256)
    tokens = sum(len(e.ids) for e in tok.encode_batch(texts[:2000])) / min(2000, len(texts))
    gguf_rows: list[dict] = []
    built: dict[str, Any] = {}
    if gguf and importlib.util.find_spec("llama_cpp") is not None:
        from margin.upstreams.llamacpp import bundled_smollm2_path

        src = bundled_smollm2_path()
        (root / "gguf").mkdir(parents=True, exist_ok=True)
        paths = {"Q4_1": src}
        for t in GGUF_TYPES:
            dst = root / "gguf" / f"{src.stem.replace('.Q4_1', '')}.{t}-from-Q4_1.gguf"
            # In a worker: llama.cpp prints every tensor it converts.
            built[t] = _run_worker({"kind": "requantize", "name": t, "src": str(src),
                                    "dst": str(dst), "ftype": t})["built"]
            if dst.exists():
                paths[t] = dst
        for name, path in paths.items():
            log(f"SmolLM2 {name} …")
            gguf_rows.append(_run_worker({"kind": "gguf", "name": name, "path": str(path),
                                          "prompts": PROMPTS, "max_tokens": max_tokens,
                                          "parallel": [1, 2, 4, 8] if name == "Q4_1" else []}))
    if as_json:
        click.echo(orjson.dumps({"minilm": rows, "quality": quality, "gguf": gguf_rows},
                                option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode())
        return
    cmd = "margin bench models" + ("" if variants == ",".join(MINILM) else f" --variants {variants}")
    lines = ["### Local model variants: memory, latency, throughput, quality, cost", "",
             header(cmd), f"Inputs: {source}; mean {tokens:.1f} tokens per question. "
             f"Cost at {cpu_hour_usd:g} USD per machine-hour (`--cpu-hour-usd`). "
             "No GPU on this machine, so no fp16/bf16 GPU column "
             f"(`--gpu-hour-usd` {gpu_hour_usd:g} would price it)."
             + (f" Machine state: {load_before} before, {load_note()} after." if load_before
                else ""), ""]
    lines += render_minilm(rows, quality, tokens, cpu_hour_usd, threshold, len(pairs), export_s)
    if gguf_rows:
        lines += [""] + render_gguf(gguf_rows, built, cpu_hour_usd, max_tokens)
    text = "\n".join(lines)
    click.echo(text)
    if out != "-":
        write_section("models", text, out)
