"""The streaming invariants of docs/design.md, in float64, for every arch, flat and pooled, and the mixed stacks."""
import pytest
import torch

from conftest import CASE_IDS, CASES, tiny
from wavelm import ModelConfig, WaveLM

POOLS = [[], [2, 3]]  # pooled config with factors that chunk sizes 3 / random do not divide
T = 61                # > attn_window (8) at every stage, so the KV rings wrap


def make(arch, pool, seed=0, **kw):
    torch.manual_seed(seed)
    return WaveLM(tiny(arch, pool, **kw)).double().eval()


def run_chunks(model, x, sizes):
    state = model.init_state(x.shape[0])
    out, t = [], 0
    for k in sizes:
        if t >= x.shape[1]:
            break
        out.append(model(x[:, t:t + k], state=state))
        t += k
    return torch.cat(out, dim=1)


def random_sizes(seed, total):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 12, (total,), generator=g).tolist()


@pytest.mark.parametrize("arch, pool, kw", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("sizes", ["ones", "threes", "random"])
def test_chunked_stream_matches_full(arch, pool, kw, sizes):
    model = make(arch, pool, **kw)
    x = torch.randint(0, 256, (2, T))
    full = model(x)
    chunks = {"ones": [1] * T, "threes": [3] * T, "random": random_sizes(1, T)}[sizes]
    torch.testing.assert_close(run_chunks(model, x, chunks), full, rtol=0, atol=1e-9)


@pytest.mark.parametrize("arch, pool, kw", CASES, ids=CASE_IDS)
def test_prefill_then_steps_match_full(arch, pool, kw):
    model = make(arch, pool, **kw)
    x = torch.randint(0, 256, (3, T))
    full = model(x)
    state = model.init_state(3)
    prefill = model(x[:, :20], state=state)
    steps = [model(x[:, t:t + 1], state=state) for t in range(20, T)]
    torch.testing.assert_close(torch.cat([prefill, *steps], 1), full, rtol=0, atol=1e-9)


@pytest.mark.parametrize("arch, pool, kw", CASES, ids=CASE_IDS)
def test_gradient_causality(arch, pool, kw):
    model = make(arch, pool, **kw)
    if model.lpc is not None:            # the LPC path's head starts at zero (its prior alone)
        torch.nn.init.normal_(model.head.weight, std=0.02)
    rf = model.receptive_field()
    n = rf + 40
    h = torch.randn(1, n, model.config.stage_dims[0], dtype=torch.float64, requires_grad=True)
    t = n - 5
    model.forward_embedded(h)[0, t].sum().backward()
    g = h.grad[0].abs().sum(-1)
    assert g[t + 1:].max() == 0, "output depends on future inputs"
    assert g[: t - rf + 1].max() == 0, "output depends on inputs beyond the receptive field"
    assert g[t] > 0 and g[t - 1] > 0, "output ignores the current and previous input"


@pytest.mark.parametrize("arch, pool, kw", CASES, ids=CASE_IDS)
def test_state_restore_is_exact(arch, pool, kw):
    model = make(arch, pool, **kw)
    x = torch.randint(0, 256, (2, 30))
    state = model.init_state(2)
    model(x[:, :23], state=state)
    saved = state.clone()
    a = model(x[:, 23:30], state=state)
    b = model(x[:, 23:30], state=saved)
    assert torch.equal(a, b)
    # and the original state kept advancing: stepping it again sees a longer history
    c = model(x[:, 23:30], state=state)
    assert not torch.equal(a, c)


def test_state_memory_is_constant():
    model = make("conformer", [2, 3])
    state = model.init_state(1)
    x = torch.randint(0, 256, (1, 400))
    model(x[:, :50], state=state)
    before = state.nbytes()
    for t in range(50, 400, 7):
        model(x[:, t:t + 7], state=state)
    assert state.nbytes() == before                  # fixed shapes, written in place


def test_training_attention_uses_band_not_dense_mask(monkeypatch):
    """The attention mask for a long chunk is (blocks, S, W + S), never T x T."""
    import torch.nn.functional as F

    from wavelm.model import layers

    shapes = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        shapes.append(tuple(attn_mask.shape))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", spy)
    cfg = ModelConfig.from_name("tiny", arch="transformer", attn_window=16, n_layers=1)
    WaveLM(cfg)(torch.randint(0, 256, (1, 4096)))
    assert shapes == [(1024, 1, 4, 20)]  # 1024 blocks of S = W/4 queries, each against W + S keys


def test_config_presets_and_errors():
    cfg = ModelConfig.from_name("small")
    assert cfg.hop == [1, 4, 16] and cfg.context_seconds >= 1.0
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown arch 'lstm'"):
        ModelConfig.from_name("tiny", arch="lstm")
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.from_name("huge")
    with pytest.raises(ValueError, match="bogus"):
        ModelConfig.from_name("tiny", bogus=1)
    with pytest.raises(ValueError, match="batch"):
        m = WaveLM(ModelConfig.from_name("tiny"))
        m(torch.zeros(2, 3, dtype=torch.long), state=m.init_state(1))


def test_checkpoint_roundtrip(tmp_path):
    from wavelm.checkpoint import CheckpointError

    model = make("conformer", [2, 3]).float()
    model.save_pretrained(tmp_path / "ck")
    back = WaveLM.from_pretrained(tmp_path / "ck")
    x = torch.randint(0, 256, (1, 40))
    torch.testing.assert_close(back(x), model(x))
    assert not list((tmp_path / "ck").glob(".*tmp*"))
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt weights"):
        WaveLM.from_pretrained(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="not a wavelm checkpoint"):
        WaveLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("pool", POOLS, ids=["flat", "pooled"])
def test_short_fresh_chunk_fast_path_matches_stream(arch, pool):
    """T <= attn_window takes the fused causal kernel; it must equal the ring-buffer path."""
    torch.manual_seed(0)
    model = WaveLM(ModelConfig.from_name("tiny", arch=arch, pool=pool, attn_window=64)).double().eval()
    x = torch.randint(0, 256, (2, 40))
    torch.testing.assert_close(run_chunks(model, x, [1] * 40), model(x), rtol=0, atol=1e-9)
