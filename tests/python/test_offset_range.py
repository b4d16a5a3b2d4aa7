"""Offsets of the bias ops are limited to +-2^61 so that q_pos - k_pos cannot wrap in int64;
lengths whose output size overflows int64 bytes get a posenc error, not torch's."""
import re

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


# ------------------------------------------------ lengths whose output overflows int64 bytes

H40 = 2**40
SIZE_CALLS = {  # name -> (call(device), shape and dtype in the message, argument named)
    "alibi_bias": (lambda d: ops.alibi_bias(torch.ones(8, device=d), H40, H40), "[8, 1099511627776, 1099511627776]", "Float", "k_len"),
    "t5_bias": (lambda d: ops.t5_bias(torch.ones(32, 8, device=d), 2**62, 3), "[8, 4611686018427387904, 3]", "Float", "q_len"),
    "kerple_bias": (lambda d: ops.kerple_bias(torch.ones(4, device=d).double(), torch.ones(4, device=d).double(), H40, H40), "[4, 1099511627776, 1099511627776]", "Double", "k_len"),
    "rel_pos_scores": (lambda d: ops.rel_pos_scores(torch.ones(1, 8, 4, 16, device=d), torch.ones(8, 9, 16, device=d), k_len=2**62), "[1, 8, 4, 4611686018427387904]", "Float", "k_len"),
    "sinusoidal_table": (lambda d: torch.ops.posenc.sinusoidal_table(torch.arange(4, device=d), 2**62, 10000.0, True, torch.float16), "[4, 4611686018427387904]", "Half", "dim"),
}


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("name", sorted(SIZE_CALLS))
def test_output_too_large_for_int64_is_a_posenc_error(name, device):
    call, shape, dtype, arg = SIZE_CALLS[name]
    msg = (rf"posenc\.{name}: argument '{arg}' is too large: the output's size in bytes must fit in int64, "
           rf"but got an output of shape {re.escape(shape)} and dtype {dtype}")
    with pytest.raises(RuntimeError, match=msg):
        call(device)


@pytest.mark.parametrize("impl", ["eager", "scripted"])
def test_sinusoidal_table_too_large_raises_before_allocating_positions(impl):
    fn = ops.sinusoidal_table if impl == "eager" else torch.jit.script(ops.sinusoidal_table)
    err = (RuntimeError, torch.jit.Error)
    with pytest.raises(err, match=r"posenc\.sinusoidal_table: argument 'num_positions' is too large: the output's size in bytes must fit in int64, but got an output of shape \[4611686018427387904, 64\]"):
        fn(2**62, 64)
    with pytest.raises(err, match=r"argument 'dim' is too large: .* shape \[3, 4611686018427387904\]"):
        fn(3, 2**62)
    # 2^60 rows of one float16 pair: 2^62 bytes fit in int64 but not in any address space; a
    # posenc message names it (issue 12: it used to be the allocator's bare error).
    with pytest.raises(err, match=r"argument 'num_positions' is too large: the output cannot be allocated .* \(4611686018427387904 bytes\)"):
        fn(2**60, 2, dtype=torch.float16)


def test_empty_outputs_with_long_lengths_are_fine():
    # 0 counts as 1 in the check: (8, 0, 2^40) float32 is 2^45 bytes of strides, accepted.
    assert ops.alibi_bias(torch.ones(8), 0, H40).shape == (8, 0, H40)
    assert ops.kerple_bias(torch.ones(2), torch.ones(2), H40, 0).shape == (2, H40, 0)


def test_output_that_fits_int64_but_not_memory_gets_a_posenc_error():
    # 8 * 2^28 * 2^28 float32 = 2^61 bytes: a valid size, larger than any address space.
    with pytest.raises(RuntimeError, match=r"posenc\.alibi_bias: argument 'k_len' is too large: the output cannot be allocated .* \(2305843009213693952 bytes\)"):
        ops.alibi_bias(torch.ones(8), 2**28, 2**28)
    assert ops.alibi_bias(torch.ones(1), 1, 2).shape == (1, 1, 2)  # the process is fine
