"""Offsets of the bias ops are limited to +-2^61 so that q_pos - k_pos cannot wrap in int64."""
import pytest
import torch

from posenc import ops

BIG = 2**63 - 1
CALLS = {
    "alibi_bias": lambda q, k: ops.alibi_bias(torch.ones(1), 1, 1, q, k, False),
    "t5_bias": lambda q, k: ops.t5_bias(torch.arange(32.0).view(32, 1), 1, 1, q, k),
    "kerple_bias": lambda q, k: ops.kerple_bias(torch.ones(1), torch.ones(1), 2, 2, q, k, "log", False),
}


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("q,k,arg", [(BIG, 0, "q_offset"), (0, -BIG - 1, "k_offset"), (2**61 + 1, 0, "q_offset")])
def test_out_of_range_offsets_are_rejected(name, q, k, arg):
    with pytest.raises(RuntimeError, match=rf"posenc\.{name}: argument '{arg}' must be within \[-2\^61, 2\^61\], but got {q if arg == 'q_offset' else k}"):
        CALLS[name](q, k)


def test_offsets_at_the_limit_give_true_distances():
    # query at 2^61, keys at -2^61 .. : distance 2^62 (+ j), far from wrapping.
    out = ops.alibi_bias(torch.tensor([1.0], dtype=torch.float64), 1, 2, 2**61, -(2**61), False)
    assert out.tolist() == [[[-float(2**62), -float(2**62 - 1)]]]
    t5 = ops.t5_bias(torch.arange(32.0).view(32, 1), 1, 1, 2**61, -(2**61))
    assert t5.item() == 15.0  # far to the left: last bucket of the negative side
