"""cacl_dist.ordered_add: the ordered index-add equals the CPU's sequential index_add_ bit for bit."""

import pytest
import torch

from cacl_dist import ordered_add as reduce


def _case(seed, count, targets, shape, dtype=torch.float64):
    """Values spanning many magnitudes (so that the order of the additions shows), many repeats."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, targets, (count,), generator=generator)
    scale = torch.exp(8 * torch.randn((count,) + shape, generator=generator, dtype=torch.float64))
    values = (torch.randn((count,) + shape, generator=generator, dtype=torch.float64) * scale).to(dtype)
    out = torch.randn((targets,) + shape, generator=generator, dtype=torch.float64).to(dtype)
    return out, index, values


def _bits(tensor):
    return tensor.view(torch.int64 if tensor.dtype == torch.float64 else torch.int32)


@pytest.mark.parametrize("shape", [(), (3,), (2, 5)])
@pytest.mark.parametrize("seed", range(4))
def test_ordered_index_add_equals_sequential_index_add(shape, seed):
    out, index, values = _case(seed, 300, 7 + 20 * seed, shape)
    expected = out.clone().index_add_(0, index, values)
    got = reduce.ordered_index_add_(out.clone(), index, values)
    assert torch.equal(_bits(got), _bits(expected))


def test_ordered_index_add_equals_a_loop_in_float64_and_float32():
    for dtype in (torch.float64, torch.float32):
        out, index, values = _case(9, 200, 5, (), dtype)
        expected = out.clone()
        for i, target in enumerate(index.tolist()):  # one addition after the other
            expected[target] = expected[target] + values[i]
        got = reduce.ordered_index_add_(out.clone(), index, values)
        assert torch.equal(_bits(got), _bits(expected)), dtype


def test_edge_cases_and_the_choice_of_path():
    out = torch.arange(4, dtype=torch.float64)
    assert torch.equal(reduce.ordered_index_add_(out.clone(), torch.empty(0, dtype=torch.int64),
                                                 torch.empty(0, dtype=torch.float64)), out)
    one = reduce.ordered_index_add_(out.clone(), torch.tensor([2, 2, 2]), torch.ones(3, dtype=torch.float64))
    assert one.tolist() == [0.0, 1.0, 5.0, 3.0]
    every = reduce.ordered_index_add_(out.clone(), torch.tensor([3, 1, 0, 2]), torch.ones(4, dtype=torch.float64))
    assert every.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert not reduce.adds_unordered(torch.device("cpu"))
    assert reduce.adds_unordered(torch.device("cuda", 0))


def test_index_add_takes_the_ordered_path_only_where_adds_are_unordered(monkeypatch):
    calls = []
    original = reduce.ordered_index_add_
    monkeypatch.setattr(reduce, "ordered_index_add_", lambda *a: calls.append(1) or original(*a))
    out, index, values = _case(1, 50, 6, (2,))
    expected = out.clone().index_add_(0, index, values)
    assert torch.equal(reduce.index_add_(out.clone(), index, values), expected) and not calls
    monkeypatch.setattr(reduce, "adds_unordered", lambda device: True)
    assert torch.equal(_bits(reduce.index_add_(out.clone(), index, values)), _bits(expected)) and calls


@pytest.mark.gpu
def test_cuda_sums_repeat_bit_for_bit_and_equal_the_cpu():
    for shape in ((), (64,)):
        out, index, values = _case(3, 200_000, 1000, shape)
        expected = out.clone().index_add_(0, index, values)
        first = reduce.index_add_(out.cuda(), index.cuda(), values.cuda())
        second = reduce.index_add_(out.cuda(), index.cuda(), values.cuda())
        assert torch.equal(_bits(first), _bits(second))
        assert torch.equal(_bits(first.cpu()), _bits(expected))
