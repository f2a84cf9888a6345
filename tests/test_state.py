"""One state layout (docs/design.md): the torch forward and the fast decoder share the state's
tensors (views, no translation), a stream can be reset alone, modules lower themselves (a new
block decodes fast from one class), and randomised configs keep every invariant."""
import logging
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import tiny
from wavelm import ModelConfig, WaveLM
from wavelm.decode.lower import compile_model
from wavelm.generation import start
from wavelm.model.blocks import ConformerBlock
from wavelm.model.config import ARCHS

STACKS = [("conformer", [2, 3]), ("conv/conv/conformer", [2, 3]), ("cat/conformer_llm/conv", [2, 2])]


def make(arch, pool, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    return WaveLM(tiny(arch, pool, **kw)).to(dtype).eval()


def tokens(B, T, seed=1):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch, pool", STACKS, ids=[a for a, _ in STACKS])
def test_state_moves_both_ways_between_torch_and_the_fast_decoder(arch, pool):
    """torch prefill -> fast steps -> torch chunk -> fast steps on one State == the full forward."""
    model = make(arch, pool)
    x = tokens(2, 70)
    with torch.no_grad():
        full = model(x)
        state = model.init_state(2)
        floats = state.floats.data_ptr()
        parts = [model(x[:, :13], state=state)]
        prog = compile_model(model, 2)
        parts.append(torch.from_numpy(prog.teacher_forced(state, x[:, 13:30].numpy()).transpose(1, 0, 2)))
        parts.append(model(x[:, 30:41], state=state))
        parts.append(torch.from_numpy(prog.teacher_forced(state, x[:, 41:].numpy()).transpose(1, 0, 2)))
    assert state.floats.data_ptr() == floats                      # written in place, never replaced
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=1e-9)


@pytest.mark.parametrize("arch, pool", STACKS + [("transformer", [])], ids=[a for a, _ in STACKS] + ["flat"])
def test_one_stream_reset_equals_a_fresh_stream(arch, pool):
    model = make(arch, pool)
    hop = model.config.hop[-1]
    cut = 4 * hop + (hop == 1) * 3                                 # a group boundary of every pool
    x, y = tokens(2, 60, seed=2), tokens(1, 60 - cut, seed=3)
    with torch.no_grad():
        want0, want1 = model(x[:1]), model(y)
        for backend in ("torch", "fast"):
            state = model.init_state(2)
            model(x[:, :cut], state=state)
            state.reset([1])
            rest = torch.cat([x[:1, cut:], y])
            if backend == "torch":
                got = torch.cat([model(rest[:, t:t + 5], state=state) for t in range(0, rest.shape[1], 5)], 1)
            else:
                got = torch.from_numpy(compile_model(model, 2).teacher_forced(state, rest.numpy()).transpose(1, 0, 2))
            torch.testing.assert_close(got[0], want0[0, cut:], rtol=0, atol=1e-9)
            torch.testing.assert_close(got[1], want1[0], rtol=0, atol=1e-9)


def test_reset_between_group_boundaries_is_refused():
    model = make("conformer", [2, 3])
    state = model.init_state(2)
    with torch.no_grad():
        model(tokens(2, 7), state=state)
    with pytest.raises(ValueError, match="group boundary"):
        state.reset([0])
    with pytest.raises(ValueError, match="0..1"):
        model.init_state(2).reset([2])


class RMSConformerBlock(ConformerBlock):
    """A new block, defined in one place: the Conformer with RMSNorm everywhere."""

    def __init__(self, dim, heads, window, cfg):
        super().__init__(dim, heads, window, cfg)
        for m in [self, self.ffn1, self.ffn2, self.conv]:
            for name, child in list(m.named_children()):
                if isinstance(child, nn.LayerNorm) and name != "dw_norm":
                    setattr(m, name, nn.RMSNorm(dim))


def test_a_new_block_decodes_fast():
    cfg = tiny("conformer", [2, 3])
    torch.manual_seed(0)
    model = WaveLM(cfg)
    model.body.pre[0] = RMSConformerBlock(cfg.stage_dims[0], 2, cfg.stage_windows[0], cfg)
    model = model.double().eval()
    for p in model.parameters():                  # non-trivial norm gains
        p.data.add_(0.01 * torch.randn_like(p))
    x = tokens(2, 40)
    with torch.no_grad():
        full = model(x)
        state = model.init_state(2)
        model(x[:, :9], state=state)
    got = compile_model(model, 2).teacher_forced(state, x[:, 9:].numpy()).transpose(1, 0, 2)
    np.testing.assert_allclose(got, full[:, 9:].numpy(), rtol=0, atol=1e-9)
    assert start(model.float(), 1).name == "numba"


def test_a_module_that_cannot_lower_falls_back_with_one_line(caplog):
    model = make("conformer", [2], dtype=torch.float32)
    model.body.pre[0].ffn1.norm = nn.Identity()                   # no fast kernel for it
    with caplog.at_level(logging.INFO, logger="wavelm.decode"):
        dec = start(model, 1)
    lines = [r for r in caplog.records if "torch reference" in r.getMessage()]
    assert dec.name == "torch" and len(lines) == 1 and "Identity" in lines[0].getMessage()
    dec.run(5)


def random_config(rng: random.Random) -> ModelConfig:
    depth = rng.randint(0, 3)
    pool = [rng.choice([2, 3, 4]) for _ in range(depth)]
    kinds = [rng.choice(ARCHS) for _ in range(depth + 1)]
    kw = dict(conv_kernel=rng.choice([2, 3, 5]), cat_kernel=rng.choice([2, 3]), llm_conv=rng.choice(["small", "large"]),
              conv_dilations=rng.choice([None, [1, 2], [1, 3, 9]]), n_layers=rng.randint(1, 3))
    if rng.random() < 0.5:                                         # the LPC path
        order, hop = rng.randint(1, 6), rng.randint(1, 8)
        kw.update(lpc_order=order, lpc_hop=hop, lpc_window=order + hop + rng.randint(0, 8))
    return tiny(kinds[0] if depth == 0 else "/".join(kinds), pool, **kw)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_randomised_configs_keep_the_invariants(seed, dtype):
    cfg = random_config(random.Random(seed))
    torch.manual_seed(seed)
    model = WaveLM(cfg).to(dtype).eval()
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    x = tokens(2, 50, seed=seed)
    with torch.no_grad():
        full = model(x)
        state = model.init_state(2)
        sizes = [random.Random(seed + 1).randint(1, 9) for _ in range(50)]
        out, t = [], 0
        for k in sizes:
            if t >= 25:
                break
            out.append(model(x[:, t:t + k], state=state))
            t += k
        torch.testing.assert_close(torch.cat(out, 1), full[:, :t], rtol=0, atol=tol, msg=str(cfg))
        got = compile_model(model, 2).teacher_forced(state, x[:, t:].numpy()).transpose(1, 0, 2)
    np.testing.assert_allclose(got, full[:, t:].numpy(), rtol=0, atol=tol, err_msg=str(cfg))
