#!/usr/bin/env python3
"""tessera against its peers (issue 4, deliverable 6) on the models of make_models.py.

For each weight format in --dtypes and each engine in --engines, on this machine:

  tessera    `tessera compile <models>/hf-<f32|f16> --target cpu [--quant q8_0|q4_0]`, then
             `tessera bench <artifact> --prompt-len P --gen G --runs R --threads T --json`
             (q8_0/q4_0 quantize the f32 folder, or the f16 one when there is no f32 folder:
             the same values either way).
  llama.cpp  llama-cpp-python on <models>/gguf/model-<dtype>.gguf: n_threads=T, n_batch=512;
             prefill = llm.eval(prompt ids) after llm.reset(); decode = G single-token evals,
             greedy argmax of the last logits between them (only the evals are timed).
  torch      transformers on CPU, torch.set_num_threads(T), the hf-f32 folder as float32 and
             hf-f16 as float16; prefill = model(input_ids); decode = G steps through
             past_key_values. Block-quantized formats have no transformers CPU path: n/a.

Every engine gets a prompt of P seeded token ids (BOS first; tessera bench draws its own
seeded ids, which does not matter for timing), ignores end-of-sequence, runs one untimed
warm-up, then R timed runs; the medians are reported. Each measurement runs in its own
process, so one engine's threads and memory never disturb another's. Nothing is installed.

  python3 bench/make_models.py --out bench/models          # once (~15 GB)
  cargo build --release
  python3 bench/compare.py --out results.json

prints a markdown table (dtype | engine | ppP tok/s | tgG tok/s | tessera/llama.cpp) and
writes the same rows as JSON. A format or engine that cannot run here is a row with "n/a"
and the reason (the failing command's error line).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ENGINES = ("tessera", "llama.cpp", "torch")
DTYPES = ("f32", "f16", "q8_0", "q4_0")
QUANTIZED = ("q8_0", "q4_0")
PROMPT_SEED = 0
BOS_ID = 1
FIRST_ORDINARY_ID = 3        # 0..2 are <unk>, <s>, </s> in make_models.py's tokenizer


class NotAvailable(Exception):
    """This engine cannot run this format here; the message says why."""


def prompt_ids(n: int, vocab: int) -> list[int]:
    """BOS, then n - 1 seeded ids that are neither special nor end-of-sequence."""
    import numpy as np
    rng = np.random.default_rng(PROMPT_SEED)
    rest = rng.integers(FIRST_ORDINARY_ID, vocab, size=n - 1)
    return [BOS_ID] + [int(t) for t in rest][: n - 1]


def vocab_size(models: Path) -> int:
    for d in ("hf-f16", "hf-f32"):
        cfg = models / d / "config.json"
        if cfg.exists():
            return json.loads(cfg.read_text())["vocab_size"]
    manifest = models / "manifest.json"
    if manifest.exists():
        return json.loads(manifest.read_text())["config"]["vocab_size"]
    raise NotAvailable(f"{models}: no hf-f16/, hf-f32/ or manifest.json to read the vocabulary from")


def error_line(text: str) -> str:
    """The line of a failed command's output that says what went wrong."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error") or "Error" in ln:
            return ln
    return lines[-1] if lines else "(no output)"


# --------------------------------------------------------------------------
# tessera: the CLI does everything, including its own timing
# --------------------------------------------------------------------------

def hf_folder(models: Path, dtype: str) -> Path:
    # Quantized formats start from the f32 folder when there is one: it holds the f16 values
    # widened (the same numbers), and what --quant leaves unquantized then stays f32.
    candidates = ["hf-f32", "hf-f16"] if dtype in QUANTIZED else [f"hf-{dtype}"]
    for c in candidates:
        if (models / c / "config.json").exists():
            return models / c
    raise NotAvailable(f"no {' or '.join(candidates)} folder in {models}")


def run_tessera(args, dtype: str) -> dict:
    exe = Path(args.tessera)
    if not exe.is_file():
        raise NotAvailable(f"{exe} does not exist (cargo build --release)")
    src = hf_folder(args.models, dtype)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    art = args.artifacts / f"{dtype}.tsr"
    compile_cmd = [str(exe), "compile", str(src), "--target", "cpu", "-o", str(art)]
    if dtype in QUANTIZED:
        compile_cmd += ["--quant", dtype]
    print("  $", " ".join(compile_cmd), flush=True)
    done = subprocess.run(compile_cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise NotAvailable(f"compile failed: {error_line(done.stderr)}")
    bench_cmd = [str(exe), "bench", str(art), "--prompt-len", str(args.prompt_len),
                 "--gen", str(args.gen), "--runs", str(args.runs),
                 "--threads", str(args.threads), "--json"]
    print("  $", " ".join(bench_cmd), flush=True)
    done = subprocess.run(bench_cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise NotAvailable(f"bench failed: {error_line(done.stderr)}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "pp_tok_s": r["prefill_tok_s"], "tg_tok_s": r["decode_tok_s"],
        "pp_runs": r["prefill_tok_s_runs"], "tg_runs": r["decode_tok_s_runs"],
        "source": str(src), "artifact": str(art),
        "decode_roofline_pct": r["decode_roofline_pct"],
        "bandwidth_gb_s": r["bandwidth_gb_s"],
        "weight_bytes_per_token": r["weight_bytes_per_token"],
    }


# --------------------------------------------------------------------------
# Peers: measured in a worker process (this script with --worker)
# --------------------------------------------------------------------------

def measure(prefill, decode_step, argmax_last, ids: list[int], gen: int, runs: int) -> dict:
    """One untimed warm-up (2 decode steps), then `runs` timed runs; medians of tok/s.

    prefill(ids) evaluates the prompt from an empty cache; decode_step(tok) feeds one token;
    argmax_last() is the greedy choice from the latest logits (not timed)."""
    def once(steps: int):
        t = time.perf_counter()
        prefill(ids)
        pp = time.perf_counter() - t
        tg = 0.0
        for _ in range(steps):
            tok = argmax_last()
            t = time.perf_counter()
            decode_step(tok)
            tg += time.perf_counter() - t
        return len(ids) / pp, steps / tg

    once(2)
    timed = [once(gen) for _ in range(runs)]
    pp_runs, tg_runs = [p for p, _ in timed], [g for _, g in timed]
    return {"pp_tok_s": statistics.median(pp_runs), "tg_tok_s": statistics.median(tg_runs),
            "pp_runs": pp_runs, "tg_runs": tg_runs}


def worker_llama_cpp(args, dtype: str) -> dict:
    try:
        import llama_cpp
    except ImportError as e:
        raise NotAvailable(f"llama-cpp-python is not installed ({e})")
    import numpy as np
    path = args.models / "gguf" / f"model-{dtype}.gguf"
    if not path.exists():
        raise NotAvailable(f"{path} does not exist (make_models.py --formats gguf)")
    ids = prompt_ids(args.prompt_len, vocab_size(args.models))
    # make_models.py writes llama.cpp's "gpt2" pre-tokenizer name, which some llama.cpp builds
    # do not know; we feed token ids, so the default regex loads the file without changing timing.
    llm = llama_cpp.Llama(
        model_path=str(path), n_threads=args.threads, n_threads_batch=args.threads,
        n_ctx=max(640, args.prompt_len + args.gen + 8), n_batch=512, n_ubatch=512,
        logits_all=False, verbose=False, kv_overrides={"tokenizer.ggml.pre": "default"})
    n_vocab = llm.n_vocab()

    def prefill(prompt):
        llm.reset()
        llm.eval(prompt)

    def argmax_last():
        # Llama.scores is only filled with logits_all; the context holds the last token's row.
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(n_vocab,))
        return int(np.argmax(logits))

    r = measure(prefill, lambda tok: llm.eval([tok]), argmax_last, ids, args.gen, args.runs)
    r.update(source=str(path), version=llama_cpp.__version__)
    return r


def worker_torch(args, dtype: str) -> dict:
    if dtype in QUANTIZED:
        raise NotAvailable(f"transformers has no CPU kernels for GGUF {dtype} blocks "
                           "(it dequantizes GGUF on load)")
    try:
        import torch
        import transformers
    except ImportError as e:
        raise NotAvailable(f"torch/transformers are not installed ({e})")
    src = args.models / f"hf-{dtype}"
    if not (src / "config.json").exists():
        raise NotAvailable(f"{src} does not exist (make_models.py --formats hf)")
    torch.set_num_threads(args.threads)
    tdtype = {"f32": torch.float32, "f16": torch.float16}[dtype]
    model = transformers.AutoModelForCausalLM.from_pretrained(str(src), dtype=tdtype).eval()
    ids = prompt_ids(args.prompt_len, model.config.vocab_size)
    state = {}

    def prefill(prompt):
        out = model(torch.tensor([prompt]), use_cache=True)
        state.update(past=out.past_key_values, logits=out.logits[0, -1])

    def decode_step(tok):
        out = model(torch.tensor([[tok]]), past_key_values=state["past"], use_cache=True)
        state.update(past=out.past_key_values, logits=out.logits[0, -1])

    with torch.inference_mode():
        r = measure(prefill, decode_step, lambda: int(state["logits"].argmax()),
                    ids, args.gen, args.runs)
    r.update(source=str(src), version=f"torch {torch.__version__}, "
                                       f"transformers {transformers.__version__}",
             torch_dtype=str(tdtype))
    return r


WORKERS = {"llama.cpp": worker_llama_cpp, "torch": worker_torch}


def run_worker(args, engine: str, dtype: str) -> dict:
    """Runs one peer measurement in a fresh process of this script; its last stdout line is JSON."""
    cmd = [sys.executable, __file__, "--worker", engine, "--dtypes", dtype,
           "--models", str(args.models), "--runs", str(args.runs), "--threads", str(args.threads),
           "--prompt-len", str(args.prompt_len), "--gen", str(args.gen)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise NotAvailable(f"{engine} failed: {error_line(done.stderr or done.stdout)}")
    r = json.loads(lines[-1])
    if "na" in r:
        raise NotAvailable(r["na"])
    return r


def worker_main(args) -> int:
    try:
        r = WORKERS[args.worker](args, args.dtypes)
    except NotAvailable as e:
        r = {"na": str(e)}
    print(json.dumps(r))
    return 0


# --------------------------------------------------------------------------

def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def table(rows: list[dict], args) -> str:
    head = (f"| dtype | engine | pp{args.prompt_len} tok/s | tg{args.gen} tok/s "
            f"| tessera/llama.cpp |")
    out = [head, "|---|---|---:|---:|---|"]
    for r in rows:
        ratio = ""
        peer = next((p for p in rows if p["dtype"] == r["dtype"] and p["engine"] == "llama.cpp"),
                    None)
        if r["engine"] == "tessera" and peer and r["pp_tok_s"] and peer["pp_tok_s"]:
            ratio = (f"pp {r['pp_tok_s'] / peer['pp_tok_s']:.2f}× · "
                     f"tg {r['tg_tok_s'] / peer['tg_tok_s']:.2f}×")
        elif r["engine"] == "tessera":
            ratio = "n/a"
        out.append(f"| {r['dtype']} | {r['engine']} | {fmt(r['pp_tok_s'])} "
                   f"| {fmt(r['tg_tok_s'])} | {ratio} |")
    reasons = [f"- {r['dtype']} {r['engine']}: n/a, {r['na']}" for r in rows if r.get("na")]
    return "\n".join(out + ([""] + reasons if reasons else []))


def parse_list(value: str, allowed: tuple[str, ...], what: str, ap) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    for v in items:
        if v not in allowed:
            ap.error(f"unknown {what} {v!r} (choose from {', '.join(allowed)})")
    return items


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=Path("bench/models"),
                    help="make_models.py's output folder (default bench/models)")
    ap.add_argument("--tessera", default="target/release/tessera",
                    help="the tessera binary (default target/release/tessera)")
    ap.add_argument("--dtypes", default="f16,q8_0,q4_0",
                    help="weight formats, from f32,f16,q8_0,q4_0 (default f16,q8_0,q4_0)")
    ap.add_argument("--engines", default=",".join(ENGINES),
                    help="engines, from tessera,llama.cpp,torch (default all)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median)")
    ap.add_argument("--threads", type=int, default=2, help="threads of every engine (default 2)")
    ap.add_argument("--prompt-len", type=int, default=512, help="prompt tokens (default 512)")
    ap.add_argument("--gen", type=int, default=128, help="decode steps (default 128)")
    ap.add_argument("--artifacts", type=Path,
                    help="where tessera's compiled artifacts go (default <models>/tsr)")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON to this file")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for name in ("runs", "threads", "prompt_len", "gen"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.worker:
        return worker_main(args)
    dtypes = parse_list(args.dtypes, DTYPES, "dtype", ap)
    engines = parse_list(args.engines, ENGINES, "engine", ap)
    if not args.models.is_dir():
        ap.error(f"--models {args.models}: no such folder (run bench/make_models.py first)")
    args.artifacts = args.artifacts or args.models / "tsr"

    rows = []
    for dtype in dtypes:
        for engine in engines:
            print(f"[{dtype} {engine}]", flush=True)
            row = {"dtype": dtype, "engine": engine, "pp_tok_s": None, "tg_tok_s": None}
            try:
                r = run_tessera(args, dtype) if engine == "tessera" else run_worker(args, engine,
                                                                                   dtype)
                row.update(r)
                print(f"  pp {r['pp_tok_s']:.1f} tok/s, tg {r['tg_tok_s']:.1f} tok/s", flush=True)
            except NotAvailable as e:
                row["na"] = str(e)
                print(f"  n/a: {e}", flush=True)
            rows.append(row)

    print()
    print(table(rows, args))
    if args.out:
        setup = {"prompt_len": args.prompt_len, "gen": args.gen, "runs": args.runs,
                 "threads": args.threads, "models": str(args.models),
                 "cpu_count": os.cpu_count()}
        args.out.write_text(json.dumps({"setup": setup, "rows": rows}, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
