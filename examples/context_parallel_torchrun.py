"""Context-parallel ring attention with RoPE and a T5 bias, one process per rank.

    torchrun --standalone --nproc-per-node 2 examples/context_parallel_torchrun.py

Every rank holds two chunks of one long sequence (the zig-zag split of
posenc.context_parallel, which evens out causal work), rotates its queries and keys with
their global positions, and computes causal attention over the whole sequence by ring
attention: key/value shards travel rank to rank, each (query chunk, key chunk) block goes to
the fused posenc.ops.relative_attention with the chunks' global offsets, and the partial
outputs are merged by their log-sum-exp. The backward sends key/value gradients back round the
ring; the T5 table's gradient is all-reduced. Rank 0 then checks output and gradients against
the same model run on the whole sequence in one process and prints the differences.
Backend: NCCL with one GPU per rank when there are enough GPUs, gloo on the CPU otherwise.
"""
import os

import torch
import torch.distributed as dist

import posenc
from posenc import context_parallel as cp


def send_recv(send, dst, recv, src):
    reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, send, dst), dist.P2POp(dist.irecv, recv, src)])
    for r in reqs:
        r.wait()


class Ring(torch.autograd.Function):
    """The key/value blocks of ring attention in one autograd node: output ``s`` is the block
    of rank ``(r - s) mod W`` (``lengths[i]`` long along ``dim``), passed on from rank to rank.
    The backward sends the accumulated gradients round the ring the other way; every rank
    runs the same exchanges even if it used none of the blocks it received. (A production ring
    overlaps each exchange with the previous block's attention; this one exchanges first.)"""

    @staticmethod
    def forward(ctx, x, dim, lengths):
        rank, world = dist.get_rank(), dist.get_world_size()
        blocks = [x.clone()]
        for step in range(1, world):
            shape = list(x.shape)
            shape[dim] = lengths[(rank - step) % world]
            recv = x.new_empty(shape)
            send_recv(blocks[-1].contiguous(), (rank + 1) % world, recv, (rank - 1) % world)
            blocks.append(recv)
        return tuple(blocks)

    @staticmethod
    def backward(ctx, *grads):
        # grads[s] belongs to rank r - s; what arrives from rank r + 1 at step s belongs to
        # rank r - (s - 1), so it adds to grads[s - 1].
        rank, world = dist.get_rank(), dist.get_world_size()
        acc = grads[world - 1].clone()
        for step in range(world - 1, 0, -1):
            recv = torch.empty_like(grads[step - 1])
            send_recv(acc.contiguous(), (rank - 1) % world, recv, (rank + 1) % world)
            acc = recv + grads[step - 1]
        return acc, None, None


def merge(acc, part):
    """Combines two partial softmax-attention results (out, lse) over disjoint key sets."""
    if acc is None:
        return part
    (o1, l1), (o2, l2) = acc, part
    lse = torch.logaddexp(l1, l2)
    ref = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)  # rows with no key yet
    return o1 * (l1 - ref).exp().unsqueeze(-1) + o2 * (l2 - ref).exp().unsqueeze(-1), lse


def ring_attention(t5, q, k, v, seq_len, load_balanced=True):
    """Causal attention of this rank's queries (B, H, S_local, D) over all ranks' keys/values,
    with ``t5``'s relative bias (a posenc.nn.T5RelativeBias with ``bidirectional=False``)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    q_chunks = cp.chunks(seq_len, world, rank, load_balanced)
    lengths = [sum(n for _, n in cp.chunks(seq_len, world, r, load_balanced)) for r in range(world)]
    ring = Ring.apply(torch.stack([k, v]), 3, lengths)
    acc = [None] * len(q_chunks)
    for step in range(world):
        src = (rank - step) % world  # whose keys are in ring[step]
        k_chunks = cp.chunks(seq_len, world, src, load_balanced)
        kv = ring[step]
        q_at = 0
        for a, (q_start, q_len) in enumerate(q_chunks):
            k_at = 0
            for k_start, k_len in k_chunks:
                if k_start <= q_start + q_len - 1:  # else the block is all in the future
                    part = posenc.ops.relative_attention(
                        q[:, :, q_at : q_at + q_len],
                        kv[0][:, :, k_at : k_at + k_len],
                        kv[1][:, :, k_at : k_at + k_len],
                        table=t5.weight, causal=True, max_distance=t5.max_distance,
                        q_offset=q_start, k_offset=k_start,
                    )
                    acc[a] = merge(acc[a], part)
                k_at += k_len
            q_at += q_len
    return torch.cat([o for o, _ in acc], 2)


def main():
    world = int(os.environ["WORLD_SIZE"])
    use_nccl = torch.cuda.device_count() >= world
    if use_nccl:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if use_nccl else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", torch.cuda.current_device()) if use_nccl else torch.device("cpu")
    torch.set_num_threads(1)
    dtype = torch.float32 if use_nccl else torch.float64

    batch, heads, seq_len, head_dim = 2, 4, 64, 16
    torch.manual_seed(0)  # the same model and data on every rank
    rope = posenc.nn.RotaryEmbedding(head_dim).to(device)
    t5 = posenc.nn.T5RelativeBias(heads, num_buckets=16, max_distance=32, bidirectional=False)
    t5 = t5.to(device, dtype)
    q, k, v, grad_out = (
        torch.randn(batch, heads, seq_len, head_dim, device=device, dtype=dtype) for _ in range(4)
    )

    # This rank's shard, rotated at its global positions.
    pos = cp.positions(seq_len, world, rank, load_balanced=True, device=device)
    q_loc, k_loc, v_loc = (cp.shard(x, 2, world, rank, True).clone().requires_grad_() for x in (q, k, v))
    q_rot, k_rot = rope(q_loc, k_loc, positions=pos)
    out = ring_attention(t5, q_rot, k_rot, v_loc, seq_len)
    (out * cp.shard(grad_out, 2, world, rank, True)).sum().backward()
    dist.all_reduce(t5.weight.grad)  # each rank's queries contributed their share

    # Collect the shards on rank 0 and compare with one process over the whole sequence.
    def gather(x):
        parts = [torch.empty_like(x) for _ in range(world)] if rank == 0 else None
        lengths = [sum(n for _, n in cp.chunks(seq_len, world, r, True)) for r in range(world)]
        if len(set(lengths)) != 1:
            raise ValueError(f"gather here needs equal shards; seq_len {seq_len} gives {lengths}")
        dist.gather(x.contiguous(), parts, dst=0)
        return cp.unshard(parts, 2, True) if rank == 0 else None

    got = {"out": gather(out.detach()), "q": gather(q_loc.grad), "k": gather(k_loc.grad), "v": gather(v_loc.grad)}
    if rank == 0:
        ref_t5 = posenc.nn.T5RelativeBias(heads, num_buckets=16, max_distance=32, bidirectional=False)
        ref_t5 = ref_t5.to(device, dtype)
        ref_t5.load_state_dict(t5.state_dict())
        qf, kf, vf = (x.clone().requires_grad_() for x in (q, k, v))
        qr, kr = rope(qf, kf)
        ref = ref_t5.attention(qr, kr, vf)
        (ref * grad_out).sum().backward()
        want = {"out": ref.detach(), "q": qf.grad, "k": kf.grad, "v": vf.grad}
        diffs = {n: (got[n] - want[n]).abs().max().item() for n in want}
        diffs["t5.weight"] = (t5.weight.grad - ref_t5.weight.grad).abs().max().item()
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        print(f"{world} ranks ({'nccl' if use_nccl else 'gloo'}, {dtype}): max |ring - single| "
              + ", ".join(f"{n} {d:.2e}" for n, d in diffs.items()))
        if max(diffs.values()) > tol:
            raise SystemExit(f"context parallel differs from single process by more than {tol}")
        print("context parallel == single process")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
