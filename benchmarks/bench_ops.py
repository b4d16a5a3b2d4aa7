"""Side-by-side timing of every posenc op, forward and backward, against

* a same-size ``clone`` (the memory-bandwidth floor: one read + one write of the output), and
* the eager PyTorch composition of the same math as people write it (Hugging Face
  ``rotate_half`` RoPE, T5 bucket + embedding gather, ALiBi from ``arange``, KERPLE from a
  distance matrix, Transformer-XL matmul + pad-and-reshape ``rel_shift``, sinusoidal table
  from an outer product).

Medians over repeated calls (CUDA events on a GPU, ``perf_counter`` on the CPU). Before timing,
each eager composition is checked against the op at a small size (fp32), so the comparison is
between two implementations of the same numbers. Not a test: nothing here asserts speed.

    python benchmarks/bench_ops.py                       # CUDA, realistic sizes, bf16
    python benchmarks/bench_ops.py --device cpu --quick  # small sizes, fp32
    python benchmarks/bench_ops.py --json out.json --markdown out.md --ops rope,t5_bias
"""
import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
import posenc  # noqa: E402
from posenc import ops  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


# ---- eager compositions (plain torch) ---------------------------------------------------------

def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def eager_rope(x, inv_freq, offset=0):
    # Hugging Face LlamaRotaryEmbedding + apply_rotary_pos_emb: fp32 angles, tables cast to x's dtype
    pos = torch.arange(offset, offset + x.shape[-2], device=x.device, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    return x * cos + rotate_half(x) * sin


def eager_rope_exact(x, inv_freq64):
    # The eager way to get exact angles: fp64 positions x fp64 inv_freq, fp64 cos/sin tables.
    pos = torch.arange(x.shape[-2], device=x.device, dtype=torch.float64)
    freqs = torch.outer(pos, inv_freq64)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    return x * cos + rotate_half(x) * sin


def eager_apply_rotary(x, cos, sin):
    return x * cos + rotate_half(x) * sin


def eager_rel_pos(q, rel_emb):
    # Transformer-XL: (B, H, L, R) product with R in decreasing-distance order, then the
    # pad-and-reshape shift that moves row i left by L - 1 - i (R = 2L - 1 covers both sides).
    B, H, L, _ = q.shape
    W = rel_emb.shape[1]
    bd = q @ rel_emb.flip(1).transpose(-1, -2)
    flat = bd.reshape(B, H, L * W)[..., L - 1 : L - 1 + L * (W - 1)]
    return flat.reshape(B, H, L, W - 1)[..., :L].contiguous()


def hf_relative_position_bucket(rp, bidirectional=True, num_buckets=32, max_distance=128):
    # T5Attention._relative_position_bucket
    buckets = torch.zeros_like(rp)
    if bidirectional:
        num_buckets //= 2
        buckets += (rp > 0).to(torch.long) * num_buckets
        rp = torch.abs(rp)
    else:
        rp = -torch.min(rp, torch.zeros_like(rp))
    max_exact = num_buckets // 2
    is_small = rp < max_exact
    large = max_exact + (
        torch.log(rp.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(is_small, rp, large)


def eager_t5(table, q_len, k_len, bidirectional=True, max_distance=128):
    # T5Attention.compute_bias: bucket matrix, embedding gather, permute to (H, q, k)
    dev = table.device
    ctx = torch.arange(q_len, dtype=torch.long, device=dev)[:, None]
    mem = torch.arange(k_len, dtype=torch.long, device=dev)[None, :]
    bucket = hf_relative_position_bucket(mem - ctx, bidirectional, table.shape[0], max_distance)
    return torch.nn.functional.embedding(bucket, table).permute(2, 0, 1).contiguous()


def distance(q_len, k_len, device, causal):
    d = torch.arange(q_len, device=device)[:, None] - torch.arange(k_len, device=device)[None, :]
    return d if causal else d.abs()


def eager_alibi(slopes, q_len, k_len, causal=True):
    d = distance(q_len, k_len, slopes.device, causal).float()
    return (-slopes.float()[:, None, None] * d).to(slopes.dtype)


def eager_kerple(r1, r2, q_len, k_len, causal=True):
    d = distance(q_len, k_len, r1.device, causal).clamp(min=0).float()
    return (-r1.float()[:, None, None] * torch.log1p(r2.float()[:, None, None] * d)).to(r1.dtype)


def eager_sinusoidal(positions, dim, dtype, base=10000.0):
    freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
    ang = positions.double()[:, None] * freq[None]
    return torch.stack((ang.sin(), ang.cos()), dim=-1).reshape(len(positions), dim).to(dtype)


# ---- cases --------------------------------------------------------------------------------------
# A case builds its inputs and returns (posenc_fn, eager_fn, grad_inputs, bytes_fwd, bytes_bwd).
# grad_inputs are the differentiable inputs (empty: forward only); bytes_* are the bytes an ideal
# kernel moves (large tensors read + written).

def esize(dtype):
    return torch.empty((), dtype=dtype).element_size()


def case_rope(dev, dtype, B, H, L, D):
    x = torch.randn(B, H, L, D, device=dev, dtype=dtype, requires_grad=True)
    inv_freq = ops.rope_inv_freq(D, device=dev)
    n = x.numel() * esize(dtype)
    return (lambda: ops.rope(x, None, inv_freq), lambda: eager_rope(x, inv_freq), [x], 2 * n, 2 * n)


def case_rope_exact(dev, dtype, B, H, L, D):
    # Exact precision (float64 inv_freq): fp64 angle reduced mod 2 pi, same memory traffic.
    x = torch.randn(B, H, L, D, device=dev, dtype=dtype, requires_grad=True)
    inv_freq = ops.rope_inv_freq(D, device=dev, dtype=torch.float64)
    n = x.numel() * esize(dtype)
    return (lambda: ops.rope(x, None, inv_freq), lambda: eager_rope_exact(x, inv_freq), [x], 2 * n, 2 * n)


def case_apply_rotary(dev, dtype, B, H, L, D):
    x = torch.randn(B, H, L, D, device=dev, dtype=dtype, requires_grad=True)
    ang = torch.outer(torch.arange(L, device=dev, dtype=torch.float32), ops.rope_inv_freq(D, device=dev))
    emb = torch.cat((ang, ang), dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    n = x.numel() * esize(dtype)
    return (lambda: ops.apply_rotary_pos_emb(x, cos, sin), lambda: eager_apply_rotary(x, cos, sin), [x], 2 * n, 2 * n)


def case_rel_pos(dev, dtype, B, H, L, D):
    q = torch.randn(B, H, L, D, device=dev, dtype=dtype, requires_grad=True)
    rel = (torch.randn(H, 2 * L - 1, D, device=dev, dtype=dtype) / math.sqrt(D)).requires_grad_()
    es = esize(dtype)
    small = (q.numel() + rel.numel()) * es
    out = B * H * L * L * es
    return (lambda: ops.rel_pos_scores(q, rel), lambda: eager_rel_pos(q, rel), [q, rel], out + small, out + 2 * small)


def case_t5(dev, dtype, H, Lq, Lk):
    table = torch.randn(32, H, device=dev, dtype=dtype, requires_grad=True)
    n = H * Lq * Lk * esize(dtype)
    return (lambda: ops.t5_bias(table, Lq, Lk), lambda: eager_t5(table, Lq, Lk), [table], n, n)


def case_alibi(dev, dtype, H, Lq, Lk):
    slopes = ops.alibi_slopes(H, dtype=dtype, device=dev).requires_grad_()
    n = H * Lq * Lk * esize(dtype)
    return (lambda: ops.alibi_bias(slopes, Lq, Lk), lambda: eager_alibi(slopes, Lq, Lk), [slopes], n, n)


def case_kerple(dev, dtype, H, Lq, Lk):
    r1 = (torch.rand(H, device=dev) + 0.5).to(dtype).requires_grad_()
    r2 = (torch.rand(H, device=dev) * 0.5 + 0.1).to(dtype).requires_grad_()
    n = H * Lq * Lk * esize(dtype)
    return (lambda: ops.kerple_bias(r1, r2, Lq, Lk, kind="log"), lambda: eager_kerple(r1, r2, Lq, Lk), [r1, r2], n, n)


def case_sinusoidal(dev, dtype, N, dim):
    positions = torch.arange(N, device=dev)
    n = N * dim * esize(dtype) + positions.numel() * 8
    return (
        lambda: torch.ops.posenc.sinusoidal_table(positions, dim, 10000.0, True, dtype),
        lambda: eager_sinusoidal(positions, dim, dtype),
        [], n, 0,
    )


CASES = {
    "rope": case_rope,
    "rope_exact": case_rope_exact,
    "apply_rotary_pos_emb": case_apply_rotary,
    "rel_pos_scores": case_rel_pos,
    "t5_bias": case_t5,
    "alibi_bias": case_alibi,
    "kerple_bias": case_kerple,
    "sinusoidal_table": case_sinusoidal,
}

SIZES = {  # realistic (GPU) sizes
    "rope": [dict(B=8, H=16, L=2048, D=128), dict(B=1, H=32, L=8192, D=128)],
    "rope_exact": [dict(B=8, H=16, L=2048, D=128)],
    "apply_rotary_pos_emb": [dict(B=8, H=16, L=2048, D=128)],
    "rel_pos_scores": [dict(B=8, H=16, L=2048, D=128), dict(B=2, H=16, L=1024, D=64)],
    "t5_bias": [dict(H=16, Lq=4096, Lk=4096), dict(H=16, Lq=1, Lk=4096)],
    "alibi_bias": [dict(H=16, Lq=4096, Lk=4096), dict(H=16, Lq=1, Lk=4096)],
    "kerple_bias": [dict(H=16, Lq=4096, Lk=4096), dict(H=16, Lq=1, Lk=4096)],
    "sinusoidal_table": [dict(N=32768, dim=1024)],
}
QUICK_SIZES = {  # small sizes (CPU, or a smoke run)
    "rope": [dict(B=1, H=4, L=256, D=64)],
    "rope_exact": [dict(B=1, H=4, L=256, D=64)],
    "apply_rotary_pos_emb": [dict(B=1, H=4, L=256, D=64)],
    "rel_pos_scores": [dict(B=1, H=2, L=128, D=32)],
    "t5_bias": [dict(H=4, Lq=256, Lk=256)],
    "alibi_bias": [dict(H=4, Lq=256, Lk=256)],
    "kerple_bias": [dict(H=4, Lq=256, Lk=256)],
    "sinusoidal_table": [dict(N=1024, dim=64)],
}
CHECK_SIZES = {  # the eager == op check (fp32)
    "rope": dict(B=2, H=3, L=17, D=8),
    "rope_exact": dict(B=2, H=3, L=17, D=8),
    "apply_rotary_pos_emb": dict(B=2, H=3, L=17, D=8),
    "rel_pos_scores": dict(B=2, H=3, L=9, D=4),
    "t5_bias": dict(H=3, Lq=150, Lk=170),
    "alibi_bias": dict(H=5, Lq=9, Lk=13),
    "kerple_bias": dict(H=3, Lq=9, Lk=13),
    "sinusoidal_table": dict(N=50, dim=16),
}


# ---- timing -------------------------------------------------------------------------------------

class Timer:
    def __init__(self, device, target_s, max_reps):
        self.cuda = device.type == "cuda"
        self.target_s = target_s
        self.max_reps = max_reps

    def once(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    def median_ms(self, fn):
        first = self.once(fn)  # warm-up (allocator, caches), also sizes the repetitions
        second = self.once(fn)
        reps = int(min(self.max_reps, max(3, self.target_s * 1e3 / max(second, 1e-3))))
        return statistics.median(self.once(fn) for _ in range(reps))


def backward_fn(make_out, inputs):
    out = make_out()
    grad = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True)


def clone_fn(make_out):
    with torch.no_grad():
        ref = make_out().detach()
    ref = torch.empty_like(ref).normal_() if ref.is_floating_point() else ref
    return lambda: ref.clone()


def check(name, dev):
    """The eager composition gives the op's numbers (fp32, small size), forward and backward."""
    torch.manual_seed(0)
    fn, eager, inputs, _, _ = CASES[name](dev, torch.float32, **CHECK_SIZES[name])
    a, b = fn(), eager()
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-4):
        return "forward mismatch"
    if inputs:
        g = torch.randn_like(a)
        ga = torch.autograd.grad(a, inputs, g)
        gb = torch.autograd.grad(b, inputs, g)
        for x, y in zip(ga, gb):
            if not torch.allclose(x, y, rtol=1e-3, atol=1e-3):
                return "backward mismatch"
    return "ok"


def short_error(e):
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "Could not run" in msg:
        return "no kernel for this device"
    return msg[:80]


def run_case(name, dev, dtype, size, timer):
    rows = []
    shape = ",".join(f"{k}={v}" for k, v in size.items())
    try:
        fn, eager, inputs, bytes_fwd, bytes_bwd = CASES[name](dev, dtype, **size)
    except Exception as e:  # noqa: BLE001  (report and go on: e.g. out of memory)
        return [dict(op=name, dir="fwd", shape=shape, error=short_error(e))]
    directions = [("fwd", fn, eager, bytes_fwd)]
    if inputs:
        directions.append(("bwd", None, None, bytes_bwd))
    for direction, f, e, nbytes in directions:
        row = dict(op=name, dir=direction, shape=shape, bytes=nbytes)
        try:
            if direction == "bwd":
                f = backward_fn(fn, inputs)
            else:
                f = lambda fn=fn: _no_grad(fn)  # noqa: E731
            row["posenc_ms"] = timer.median_ms(f)
            row["clone_ms"] = timer.median_ms(clone_fn(fn))
        except Exception as exc:  # noqa: BLE001
            row["error"] = short_error(exc)
            rows.append(row)
            _free(dev)
            continue
        try:
            if direction == "bwd":
                e = backward_fn(eager, inputs)
            else:
                e = lambda eager=eager: _no_grad(eager)  # noqa: E731
            row["eager_ms"] = timer.median_ms(e)
        except Exception as exc:  # noqa: BLE001
            row["eager_error"] = short_error(exc)
        rows.append(row)
        _free(dev)
    return rows


def _no_grad(fn):
    with torch.no_grad():
        return fn()


def _free(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ---- report -------------------------------------------------------------------------------------

COLUMNS = ["op", "dir", "shape", "posenc ms", "clone ms", "eager ms", "posenc GB/s", "posenc/clone", "eager/posenc"]


def cells(row):
    if "error" in row:
        return [row["op"], row["dir"], row["shape"], "error: " + row["error"], "", "", "", "", ""]
    p, c = row["posenc_ms"], row["clone_ms"]
    eager = row.get("eager_ms")
    return [
        row["op"], row["dir"], row["shape"],
        f"{p:.4f}", f"{c:.4f}",
        f"{eager:.4f}" if eager is not None else "error: " + row.get("eager_error", "?"),
        f"{row['bytes'] / (p * 1e-3) / 1e9:.1f}",
        f"{p / c:.2f}",
        f"{eager / p:.2f}x" if eager is not None else "",
    ]


def table_text(rows):
    data = [COLUMNS] + [cells(r) for r in rows]
    widths = [max(len(str(r[i])) for r in data) for i in range(len(COLUMNS))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in data]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table_markdown(rows):
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--ops", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    p.add_argument("--quick", action="store_true", help="small sizes (default on CPU)")
    p.add_argument("--target-s", type=float, default=0.2, help="time spent per measurement (s)")
    p.add_argument("--max-reps", type=int, default=100)
    p.add_argument("--json", type=Path, help="write the rows and the environment as JSON")
    p.add_argument("--markdown", type=Path, help="write the table as Markdown")
    p.add_argument("--no-check", action="store_true", help="skip the eager == op check")
    p.add_argument("--threads", type=int, help="torch.set_num_threads for CPU runs")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is available")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    names = [n.strip() for n in args.ops.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        p.error(f"unknown ops {unknown}; choose from {list(CASES)}")
    sizes = QUICK_SIZES if (args.quick or dev.type == "cpu") else SIZES
    timer = Timer(dev, args.target_s, args.max_reps)

    env = dict(
        torch=torch.__version__, cuda=torch.version.cuda, posenc=posenc.__version__,
        device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        dtype=str(dtype).replace("torch.", ""), python=platform.python_version(),
    )
    print("posenc bench:", ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)

    checks = {}
    if not args.no_check:
        for name in names:
            try:
                checks[name] = check(name, dev)
            except Exception as e:  # noqa: BLE001
                checks[name] = "error: " + short_error(e)
        print("eager == op (fp32, small):", ", ".join(f"{k} {v}" for k, v in checks.items()), flush=True)

    rows = []
    t0 = time.perf_counter()
    for name in names:
        for size in sizes[name]:
            torch.manual_seed(0)
            new = run_case(name, dev, dtype, size, timer)
            for r in new:
                r["dtype"] = env["dtype"]
            rows += new
            print(table_text(new).split("\n", 2)[-1], flush=True)
    print(f"\n{len(rows)} rows in {time.perf_counter() - t0:.1f} s\n")
    print(table_text(rows))
    print("\nposenc/clone: time relative to a clone of the output (1.0 = copy speed); "
          "eager/posenc: speed-up over the eager composition; GB/s: ideal bytes / posenc time.")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(env=env, checks=checks, rows=rows), indent=1))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        head = f"posenc benchmark — {env['device']}, torch {env['torch']}, {env['dtype']}\n\n"
        chk = "eager == op check (fp32): " + ", ".join(f"{k}: {v}" for k, v in checks.items()) + "\n\n" if checks else ""
        args.markdown.write_text(head + chk + table_markdown(rows) + "\n")
    # a composition that disagrees with the op makes the comparison meaningless: fail loudly
    return 1 if any("mismatch" in v for v in checks.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
