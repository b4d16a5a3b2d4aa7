"""Fused relative-position attention (``posenc.ops.relative_attention``) against the usual ways
of getting the same numbers, forward and forward+backward, B=1, H=8, D=64:

* ``materialized``: the posenc bias op (``alibi_bias``, ``t5_bias``, ``kerple_bias``,
  ``rel_pos_scores``) plus the causal mask, passed as ``attn_mask`` to
  ``scaled_dot_product_attention`` (an L x L tensor; gradients flow into the position parameters),
* ``sdpa``: ``scaled_dot_product_attention(is_causal=True)`` with no position term (the floor),
* ``flex``: ``torch.compile(flex_attention)`` with the family's ``score_mod`` and a causal
  block mask (reported, not fatal, where it does not run on this machine / torch).

Families: none, alibi, t5 (32 buckets, max_distance 128), kerple (log), rel (Transformer-XL,
``rel_emb (H, 2L-1, D)``, ``q_rel = q + v_bias``), shaw (``rel_emb (H, 257, D)``, clipped at 128).
Medians from ``torch.utils.benchmark`` (synchronized on CUDA); "fwd" runs under ``no_grad``,
"fwd+bwd" is forward + ``autograd.grad`` into q, k, v and the position parameters. Before
timing, the fused op is checked against the materialized path at a small length (fp32) and
every flex result against the fused one. Peak memory is measured per row in a fresh
subprocess (``--one``): peak RSS (VmHWM, reset through /proc/self/clear_refs) or CUDA
``max_memory_allocated`` above the inputs, minus the returned outputs / gradients.

    python benchmarks/bench_attention.py --quick                    # L=256 smoke run, CPU fp32
    python benchmarks/bench_attention.py --lengths 512,1024 --families alibi,t5
    python benchmarks/bench_attention.py --device cuda --json out.json --markdown out.md
"""
import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
import posenc  # noqa: E402
from posenc import ops  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
FAMILIES = ["none", "alibi", "t5", "kerple", "rel", "shaw"]
PATHS = ["posenc", "materialized", "sdpa", "flex"]
PASSES = ["fwd", "fwdbwd"]
LENGTHS = [512, 1024, 2048, 4096, 8192]
B, H, D = 1, 8, 64
T5_BUCKETS, T5_MAX_DISTANCE, SHAW_CLIP = 32, 128, 128
CHECK_L = 150  # > one 128 tile, not a multiple of it, > the Shaw clip


# ---- inputs -------------------------------------------------------------------------------------

def make_inputs(family, L, dev, dtype, grad, causal, seed=0):
    """q, k, v, the family's position parameters (leaves) and the causal mask (a constant)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0, uniform=False):
        x = torch.rand(*shape, generator=g) if uniform else torch.randn(*shape, generator=g)
        return (x * scale + shift).to(device=dev, dtype=dtype).requires_grad_(grad)

    inp = dict(q=rand(B, H, L, D), k=rand(B, H, L, D), v=rand(B, H, L, D), params={})
    p = inp["params"]
    if family == "alibi":
        p["slopes"] = ops.alibi_slopes(H, dtype=dtype, device=dev).requires_grad_(grad)
    elif family == "t5":
        p["table"] = rand(T5_BUCKETS, H, scale=0.5)
    elif family == "kerple":
        p["r1"] = rand(H, scale=1.0, shift=0.5, uniform=True)
        p["r2"] = rand(H, scale=0.5, shift=0.1, uniform=True)
    elif family == "rel":
        p["rel_emb"] = rand(H, 2 * L - 1, D, scale=1 / math.sqrt(D))
        p["v_bias"] = rand(H, 1, D, scale=0.1)
    elif family == "shaw":
        p["rel_emb"] = rand(H, 2 * SHAW_CLIP + 1, D, scale=1 / math.sqrt(D))
    if causal:
        i = torch.arange(L, device=dev)
        inp["mask"] = torch.zeros(L, L, device=dev, dtype=dtype).masked_fill(i[None] > i[:, None], float("-inf"))
    else:
        inp["mask"] = None
    return inp


def leaves(inp):
    return [inp["q"], inp["k"], inp["v"], *inp["params"].values()]


# ---- the four paths (each returns the attention output) ----------------------------------------

def run_posenc(inp, family, causal):
    p = dict(inp["params"])
    if family == "rel":
        p["q_rel"] = inp["q"] + p.pop("v_bias")
    if family == "kerple":
        p["kerple_kind"] = "log"
    if family == "t5":
        p["max_distance"] = T5_MAX_DISTANCE
    return ops.relative_attention(inp["q"], inp["k"], inp["v"], causal=causal, **p)[0]


def bias(inp, family, causal):
    p, L = inp["params"], inp["q"].shape[-2]
    if family == "alibi":
        return ops.alibi_bias(p["slopes"], L, L, causal=causal)
    if family == "t5":
        return ops.t5_bias(p["table"], L, L, bidirectional=not causal, max_distance=T5_MAX_DISTANCE)
    if family == "kerple":
        return ops.kerple_bias(p["r1"], p["r2"], L, L, kind="log", causal=causal)
    if family == "rel":
        return ops.rel_pos_scores(inp["q"] + p["v_bias"], p["rel_emb"])
    if family == "shaw":
        return ops.rel_pos_scores(inp["q"], p["rel_emb"])
    return None


def run_materialized(inp, family, causal):
    b, m = bias(inp, family, causal), inp["mask"]
    mask = m if b is None else (b if m is None else b + m)
    return F.scaled_dot_product_attention(inp["q"], inp["k"], inp["v"], attn_mask=mask)


def run_sdpa(inp, family, causal):
    return F.scaled_dot_product_attention(inp["q"], inp["k"], inp["v"], is_causal=causal)


_FLEX = {}


def flex_fns():
    if not _FLEX:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        for knob in ("cache_size_limit", "recompile_limit"):  # one graph per (family, L, pass)
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, 256)
        _FLEX.update(attn=torch.compile(flex_attention, dynamic=False), block_mask=create_block_mask, masks={})
    return _FLEX


def flex_block_mask(L, dev):
    f = flex_fns()
    key = (L, str(dev))
    if key not in f["masks"]:
        f["masks"][key] = f["block_mask"](lambda b, h, qi, ki: qi >= ki, None, None, L, L, device=dev)
    return f["masks"][key]


def run_flex(inp, family, causal):
    f = flex_fns()
    q, p, L = inp["q"], inp["params"], inp["q"].shape[-2]
    dist = (lambda qi, ki: qi - ki) if causal else (lambda qi, ki: (qi - ki).abs())
    score_mod = None
    if family == "alibi":
        slopes = p["slopes"]
        score_mod = lambda s, b, h, qi, ki: s - slopes[h] * dist(qi, ki)  # noqa: E731
    elif family == "t5":
        # bucket of each relative position k - q (2L-1 of them), gathered outside the kernel
        rp = torch.arange(-(L - 1), L, device=q.device)
        per_rp = p["table"][ops.t5_relative_bucket(rp, not causal, T5_BUCKETS, T5_MAX_DISTANCE)]
        score_mod = lambda s, b, h, qi, ki: s + per_rp[ki - qi + L - 1, h]  # noqa: E731
    elif family == "kerple":
        r1, r2 = p["r1"], p["r2"]
        kd = (lambda qi, ki: (qi - ki).clamp(min=0)) if causal else dist
        score_mod = lambda s, b, h, qi, ki: s - r1[h] * torch.log1p(r2[h] * kd(qi, ki))  # noqa: E731
    elif family in ("rel", "shaw"):
        # score_mod sees one scalar: precompute q_rel . R for every (query, relative row);
        # (B, H, L, 2L-1) for Transformer-XL (bigger than the bias), (B, H, L, 257) for Shaw.
        q_rel = q + p["v_bias"] if family == "rel" else q
        qr = q_rel @ p["rel_emb"].transpose(-1, -2)
        c = (p["rel_emb"].shape[1] - 1) // 2
        score_mod = lambda s, b, h, qi, ki: s + qr[b, h, qi, c + (qi - ki).clamp(-c, c)]  # noqa: E731
    bm = flex_block_mask(L, q.device) if causal else None
    return f["attn"](q, inp["k"], inp["v"], score_mod=score_mod, block_mask=bm)


RUN = {"posenc": run_posenc, "materialized": run_materialized, "sdpa": run_sdpa, "flex": run_flex}


def call(path, pas, inp, family, causal, g=None):
    """One timed unit: the forward (no_grad) or forward + autograd.grad into the leaves."""
    if pas == "fwd":
        with torch.no_grad():
            return RUN[path](inp, family, causal)
    out = RUN[path](inp, family, causal)
    return torch.autograd.grad(out, leaves(inp), g if g is not None else torch.ones_like(out))


# ---- memory -------------------------------------------------------------------------------------

def esize(dtype):
    return torch.empty((), dtype=dtype).element_size()


def estimate_bytes(family, path, L, pas, dtype):
    """Extra peak of the paths that hold L x L tensors, with margin: CPU fp32 at L=1024 measured
    ~4.2 score matrices for materialized fwd and fwd+bwd, 2 for flex rel fwd."""
    n = B * H * L * L * esize(dtype)
    if path == "materialized":
        return (5 if pas == "fwd" else 6) * n
    if path == "flex" and family == "rel":
        return (3 if pas == "fwd" else 6) * n
    return 0


def available_bytes(dev):
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 24 * 2**30


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field + " not in /proc/self/status")


def nbytes(x):
    xs = x if isinstance(x, (tuple, list)) else [x]
    return sum(t.numel() * t.element_size() for t in xs if isinstance(t, torch.Tensor))


def measure_one(family, path, L, pas, dev, dtype, causal):
    """The --one mode: extra peak (MB) of one call above its inputs, outputs excluded."""
    inp = make_inputs(family, L, dev, dtype, pas == "fwdbwd", causal)
    call(path, pas, inp, family, causal)  # warm-up: code pages, compilation, allocator
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        res = call(path, pas, inp, family, causal)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(dev)
        how = "cuda max_memory_allocated"
    else:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := VmRSS
            base = _status_kb("VmRSS") * 1024
            res = call(path, pas, inp, family, causal)
            peak = _status_kb("VmHWM") * 1024
            how = "VmHWM"
        except OSError:  # no clear_refs: the warm-up already set ru_maxrss, so this undercounts
            import resource
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            res = call(path, pas, inp, family, causal)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            how = "ru_maxrss (after warm-up)"
    extra = max(peak - base - nbytes(res), 0)
    return dict(extra_mb=extra / 2**20, peak_growth_mb=(peak - base) / 2**20, outputs_mb=nbytes(res) / 2**20, how=how)


def measure_in_subprocess(args, family, path, L, pas):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", f"{family}:{path}:{L}:{pas}",
           "--device", args.device, "--dtype", args.dtype]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.bidirectional:
        cmd.append("--bidirectional")
    # large blocks straight from mmap and back on free: RSS follows the live tensors
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.mem_timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(error=f"memory run timed out after {args.mem_timeout} s")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        tail = (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
        return dict(error=tail[:100])
    return json.loads(lines[-1])


# ---- timing and checks --------------------------------------------------------------------------

def median_ms(fn, target_s, min_reps, max_reps):
    t = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    first = t.timeit(1).median  # warm-up (allocator, caches), also sizes the repetitions
    number = max(1, int(0.005 / max(first, 1e-9)))  # blocks of >= 5 ms for tiny calls
    reps = int(min(max_reps, max(min_reps, target_s / (first * number))))
    return statistics.median(t.timeit(number).median for _ in range(reps)) * 1e3


def short_error(e):
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:160]


def compare(a, b, rtol, atol):
    a, b = (a if isinstance(a, (tuple, list)) else [a]), (b if isinstance(b, (tuple, list)) else [b])
    worst = 0.0
    for x, y in zip(a, b):
        err = ((x.float() - y.float()).abs() - rtol * y.float().abs()).max().item()
        worst = max(worst, err)
    return worst <= atol, worst


def check_fused(family, dev, causal):
    """posenc fused == materialized (fp32, L=CHECK_L), forward and all gradients."""
    inp = make_inputs(family, CHECK_L, dev, torch.float32, True, causal, seed=1)
    g = torch.randn(B, H, CHECK_L, D, generator=torch.Generator().manual_seed(2)).to(dev)
    with torch.no_grad():
        ok, err = compare(run_posenc(inp, family, causal), run_materialized(inp, family, causal), 1e-4, 1e-4)
    if not ok:
        return f"forward mismatch ({err:.2e})"
    ok, err = compare(call("posenc", "fwdbwd", inp, family, causal, g),
                      call("materialized", "fwdbwd", inp, family, causal, g), 1e-3, 1e-3)
    return "ok" if ok else f"backward mismatch ({err:.2e})"


# ---- one length ---------------------------------------------------------------------------------

def bench_length(args, L, dev, dtype, causal, flex_notes, sdpa_cache):
    rows = []
    tol = (1e-3, 1e-3) if dtype in (torch.float32, torch.float64) else (3e-2, 3e-2)
    avail = available_bytes(dev)
    for family in args.family_list:
        for path in PATHS:
            if path == "sdpa" and L in sdpa_cache:
                rows.append({k: v for k, v in sdpa_cache[L].items() if "_vs_" not in k} | dict(family=family))
                continue
            row = dict(family=family, path=path, L=L)
            for pas in PASSES:
                need = estimate_bytes(family, path, L, pas, dtype)
                if need > 0.9 * avail:
                    row[pas + "_skip"] = f"skipped: would need {need / 2**30:.1f} GiB"
                    continue
                torch.manual_seed(0)
                try:
                    inp = make_inputs(family, L, dev, dtype, pas == "fwdbwd", causal)
                    g = torch.randn(B, H, L, D, generator=torch.Generator().manual_seed(3)).to(dev, dtype)
                    if path == "flex":  # compile, and never time a wrong answer
                        res = call("flex", pas, inp, family, causal, g)
                        ok, err = compare(res, call("posenc", pas, inp, family, causal, g), *tol)
                        if not ok:
                            raise RuntimeError(f"flex != posenc (max excess error {err:.2e})")
                    row[pas + "_ms"] = median_ms(lambda: call(path, pas, inp, family, causal, g),
                                                 args.target_s, args.min_reps, args.max_reps)
                except Exception as e:  # noqa: BLE001  (report and go on)
                    msg = short_error(e)
                    row[pas + "_error"] = msg
                    if path == "flex" and msg not in flex_notes:
                        flex_notes.append(msg)
                        print(f"flex ({family}, L={L}, {pas}) does not run here: {msg}", flush=True)
                    continue
                finally:
                    inp = g = None
                    gc.collect()
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                        torch.cuda.empty_cache()
                if args.memory:
                    mem = measure_in_subprocess(args, family, path, L, pas)
                    row[pas + "_mem"] = mem
            if path == "sdpa":
                sdpa_cache[L] = row
            rows.append(row)
        print(table_text(rows_of(rows, L, family), with_family=False, title=f"L={L}, {family}"), flush=True)
    add_ratios(rows)
    return rows


def rows_of(rows, L, family):
    return [r for r in rows if r["L"] == L and r["family"] == family]


def add_ratios(rows):
    for r in rows:
        same = [x for x in rows if x["L"] == r["L"] and x["family"] == r["family"]]
        ref = {x["path"]: x for x in same}
        for pas in PASSES:
            t = r.get(pas + "_ms")
            for name in ("sdpa", "materialized"):
                base = ref.get(name, {}).get(pas + "_ms")
                if t is not None and base:
                    r[f"{pas}_vs_{name}"] = t / base


# ---- report -------------------------------------------------------------------------------------

COLUMNS = ["family", "path", "fwd ms", "fwd+bwd ms", "fwd/sdpa", "f+b/sdpa", "fwd/mat", "f+b/mat",
           "fwd peak MB", "f+b peak MB"]


def _time_cell(r, pas):
    if pas + "_ms" in r:
        return f"{r[pas + '_ms']:.3f}"
    if pas + "_skip" in r:
        return r[pas + "_skip"]
    if pas + "_error" in r:
        return "n/a" if r["path"] == "flex" else "error: " + r[pas + "_error"][:60]
    return ""


def _ratio(r, key):
    return f"{r[key]:.2f}" if key in r else ""


def _mem_cell(r, pas):
    m = r.get(pas + "_mem")
    if m is None:
        return r.get(pas + "_skip", "")
    return f"{m['extra_mb']:.1f}" if "extra_mb" in m else "error: " + m.get("error", "?")[:40]


def cells(r, with_family=True):
    c = [r["path"], _time_cell(r, "fwd"), _time_cell(r, "fwdbwd"),
         _ratio(r, "fwd_vs_sdpa"), _ratio(r, "fwdbwd_vs_sdpa"),
         _ratio(r, "fwd_vs_materialized"), _ratio(r, "fwdbwd_vs_materialized"),
         _mem_cell(r, "fwd"), _mem_cell(r, "fwdbwd")]
    return [r["family"]] + c if with_family else c


def table_text(rows, with_family=True, title=None):
    add_ratios(rows)
    cols = COLUMNS if with_family else COLUMNS[1:]
    data = [cols] + [cells(r, with_family) for r in rows]
    widths = [max(len(str(r[i])) for r in data) for i in range(len(cols))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in data]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return ("\n" + title + "\n" if title else "") + "\n".join(lines)


def table_markdown(rows):
    out = []
    for L in sorted({r["L"] for r in rows}):
        out += [f"\n### L = {L}\n", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        out += ["| " + " | ".join(cells(r)) + " |" for r in rows if r["L"] == L]
    return "\n".join(out)


LEGEND = ("x/sdpa: time over SDPA without a position term (the floor); x/mat: time over the "
          "materialized bias + SDPA (< 1 is faster); peak MB: extra peak memory of one call above its "
          "inputs, outputs/gradients excluded, measured in a fresh process.")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--lengths", default=None, help="comma-separated sequence lengths (default: %s)" % ",".join(map(str, LENGTHS)))
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of: " + ", ".join(FAMILIES))
    p.add_argument("--bidirectional", action="store_true", help="no causal mask (default: causal)")
    p.add_argument("--quick", action="store_true", help="smoke run: L=256, few repetitions")
    p.add_argument("--target-s", type=float, default=None, help="time spent per measurement (s); default 1, 0.05 with --quick")
    p.add_argument("--min-reps", type=int, default=None, help="default 5, 2 with --quick")
    p.add_argument("--max-reps", type=int, default=None, help="default 50, 3 with --quick")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory subprocesses")
    p.add_argument("--mem-timeout", type=float, default=900, help="seconds per memory subprocess")
    p.add_argument("--json", type=Path, help="write the rows and the environment as JSON")
    p.add_argument("--markdown", type=Path, help="write the tables as Markdown")
    p.add_argument("--no-check", action="store_true", help="skip the fused == materialized check")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # family:path:L:pass, memory of one call
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is available")
    args.dtype = args.dtype or ("bf16" if dev.type == "cuda" else "fp32")
    dtype = DTYPES[args.dtype]
    causal = not args.bidirectional

    if args.one:
        family, path, L, pas = args.one.split(":")
        print(json.dumps(measure_one(family, path, int(L), pas, dev, dtype, causal)), flush=True)
        return 0

    args.family_list = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in args.family_list if f not in FAMILIES]
    if unknown:
        p.error(f"unknown families {unknown}; choose from {FAMILIES}")
    if args.lengths:
        lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    else:
        lengths = [256] if args.quick else LENGTHS
    q = args.quick
    args.target_s = args.target_s if args.target_s is not None else (0.05 if q else 1.0)
    args.min_reps = args.min_reps if args.min_reps is not None else (2 if q else 5)
    args.max_reps = args.max_reps if args.max_reps is not None else (3 if q else 50)

    env = dict(
        torch=torch.__version__, posenc=posenc.__version__,
        device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        dtype=args.dtype, threads=torch.get_num_threads(), causal=causal, B=B, H=H, D=D,
        python=platform.python_version(),
    )
    print("posenc attention bench:", ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)

    checks = {}
    if not args.no_check:
        for family in args.family_list:
            try:
                checks[family] = check_fused(family, dev, causal)
            except Exception as e:  # noqa: BLE001
                checks[family] = "error: " + short_error(e)
        print(f"fused == materialized (fp32, L={CHECK_L}):", ", ".join(f"{k} {v}" for k, v in checks.items()), flush=True)
        bad = {k: v for k, v in checks.items() if v != "ok"}
        if bad:  # never time a wrong answer
            print("fused check failed, not timing:", bad, file=sys.stderr)
            return 1

    rows, flex_notes, sdpa_cache = [], [], {}
    t0 = time.perf_counter()
    for L in lengths:
        rows += bench_length(args, L, dev, dtype, causal, flex_notes, sdpa_cache)
    add_ratios(rows)
    print(f"\n{len(rows)} rows in {time.perf_counter() - t0:.1f} s")
    for L in lengths:
        print(table_text([r for r in rows if r["L"] == L], title=f"L = {L}"))
    print("\n" + LEGEND)
    for n in flex_notes:
        print("flex n/a:", n)

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(env=env, checks=checks, flex_notes=flex_notes, rows=rows), indent=1))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        head = f"posenc attention benchmark — {env['device']}, torch {env['torch']}, {env['dtype']}, " \
               f"{env['threads']} threads, B={B} H={H} D={D}, {'causal' if causal else 'bidirectional'}\n\n"
        chk = f"fused == materialized check (fp32, L={CHECK_L}): " + \
            ", ".join(f"{k}: {v}" for k, v in checks.items()) + "\n\n" if checks else ""
        notes = "".join(f"\nflex n/a: {n}\n" for n in flex_notes)
        args.markdown.write_text(head + chk + table_markdown(rows) + "\n\n" + LEGEND + "\n" + notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
