"""The LPC path (docs/design.md, "The LPC path"): the predictor against an independent reference,
its distribution is proper, the model starts as the LPC, causality over tokens, per-stream reset,
and the fast decoder on it. The chunked/prefill/restore/fast-step invariants run for the LPC
stacks of tests/conftest.py with every other stack."""
import numpy as np
import pytest
import torch

from conftest import tiny
from wavelm import WaveLM
from wavelm.decode.lower import compile_model
from wavelm.generation import start
from wavelm.model import lpc as L

FLAT = dict(lpc_order=4, lpc_window=16, lpc_hop=4)
POOLED = dict(lpc_order=3, lpc_window=12, lpc_hop=6)          # hop[-1] of pool [2, 3] is 6


def make(arch="conformer", pool=(), dtype=torch.float64, seed=0, trained=True, **kw):
    torch.manual_seed(seed)
    model = WaveLM(tiny(arch, pool, **(kw or FLAT))).to(dtype).eval()
    if trained:                      # move the head and gate off their zero start
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return model


def tokens(B, T, seed=1):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


def tone(T, f=0.031, seed=0):
    """Mu-law tokens of a decaying two-partial tone with a little noise: what LPC is for."""
    g = np.random.default_rng(seed)
    t = np.arange(T)
    x = 0.5 * np.exp(-t / 4000) * (np.sin(2 * np.pi * f * t) + 0.3 * np.sin(2 * np.pi * 2.01 * f * t))
    from wavelm.audio import mulaw_encode
    return torch.from_numpy(mulaw_encode((x + 1e-3 * g.standard_normal(T)).astype(np.float32)))[None]


def reference_lpc(tok, order, window, hop):
    """Pred and scale per step, written plainly: numpy solve of the Toeplitz normal equations."""
    v = np.concatenate([np.zeros(window), L.code_values()[tok]])
    T = len(tok)
    a, s = np.zeros(order), 0.0
    pred, scale = np.zeros(T), np.zeros(T)
    for t in range(T):
        n = window + t                                      # index of input t in v
        if t % hop == 0:
            res = [v[k] - a @ v[k - order:k][::-1] for k in range(n - hop + 1, n + 1)]
            s = max(L.MULT * np.mean(np.abs(res)), L.MIN_SCALE)
            w = v[n - window + 1:n + 1] * L.hann(window)
            r = np.array([w[:window - k] @ w[k:] for k in range(order + 1)])
            r0 = r[0] * (1 + L.WNC) + L.TINY
            R = np.array([[r0 if i == j else r[abs(i - j)] for j in range(order)] for i in range(order)])
            a = np.linalg.solve(R, r[1:])
        pred[t] = a @ v[n - order + 1:n + 1][::-1]
        scale[t] = s
    return pred, scale


def test_predictor_matches_a_plain_reference():
    x = tone(700)
    pred, scale = L.LPC(8, 64, 16)(x)
    want_p, want_s = reference_lpc(x[0].numpy(), 8, 64, 16)
    np.testing.assert_allclose(pred[0].numpy(), want_p, rtol=0, atol=1e-9)
    np.testing.assert_allclose(scale[0].numpy(), want_s, rtol=1e-9)
    # and it predicts: on a tone the residual is far below the signal
    v = torch.tensor(L.code_values())[x[0]]
    assert (v[301:] - pred[0, 300:-1]).abs().mean() < 0.1 * v[300:].abs().mean()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_prior_is_a_proper_distribution(dtype):
    pred = torch.tensor([-1.5, -0.9, -1e-4, 2e-6, 3e-5, 0.2, 0.99, 1.2], dtype=torch.float64)
    for s in (1e-6, 1e-4, 1e-2, 1.0):
        logp = L.log_prior(pred, torch.full_like(pred, s), dtype)
        assert logp.dtype == dtype and torch.isfinite(logp).all()
        torch.testing.assert_close(logp.double().exp().sum(-1), torch.ones(8, dtype=torch.float64),
                                   rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-12)
        assert (logp >= np.log(L.FLOOR / L.V) - 1e-5).all()
        # the most likely code is the one the prediction falls in
        code, _ = L.features(pred, torch.full_like(pred, s), dtype)
        if s <= 1e-4:
            assert torch.equal(logp.argmax(-1), code)
    # log_prob (the baselines) is log_prior at the target
    target = torch.tensor([0, 3, 127, 128, 128, 170, 254, 255])
    s = torch.full_like(pred, 1e-3)
    torch.testing.assert_close(L.log_prob(pred, s, target), L.log_prior(pred, s, torch.float64)[torch.arange(8), target])


@pytest.mark.parametrize("pool, kw", [([], FLAT), ([2, 3], POOLED)], ids=["flat", "pooled"])
def test_untrained_model_scores_what_the_lpc_scores(pool, kw):
    model = make("conv/conv/conformer" if pool else "conformer", pool, trained=False, **kw)
    x = tone(300)
    pred, scale = L.LPC(kw["lpc_order"], kw["lpc_window"], kw["lpc_hop"])(x)
    # (the gate's bias, log(e - 1), is rounded to float32 when the model is built: weight 1 +- 6e-8)
    torch.testing.assert_close(model(x).log_softmax(-1), L.log_prior(pred, scale, torch.float64),
                               rtol=1e-7, atol=1e-12)


def test_outputs_depend_only_on_past_tokens_within_the_receptive_field():
    model = make()
    rf = model.receptive_field()
    T = rf + 30
    x = tokens(1, T)
    t = T - 10
    with torch.no_grad():
        base = model(x)
        future = x.clone()
        future[0, t + 1:] = 255 - future[0, t + 1:]
        assert torch.equal(model(future)[0, :t + 1], base[0, :t + 1]), "output depends on future tokens"
        far = x.clone()
        far[0, :t - rf + 1] = 255 - far[0, :t - rf + 1]
        assert torch.equal(model(far)[0, t], base[0, t]), "output depends on tokens beyond the receptive field"
        near = x.clone()
        near[0, t] = 255 - near[0, t]
        assert not torch.equal(model(near)[0, t], base[0, t])


@pytest.mark.parametrize("pool, kw", [([], FLAT), ([2, 3], POOLED)], ids=["flat", "pooled"])
def test_lpc_stream_reset_equals_a_fresh_stream(pool, kw):
    model = make("conformer", pool, **kw)
    cut = 3 * kw["lpc_hop"]                               # an LPC block and pool group boundary
    x, y = tokens(2, 50, seed=2), tokens(1, 50 - cut, seed=3)
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


def test_reset_inside_an_lpc_block_is_refused():
    model = make()
    state = model.init_state(2)
    model(tokens(2, FLAT["lpc_hop"] + 1), state=state)
    with pytest.raises(ValueError, match="LPC block boundary"):
        state.reset([0])


def test_state_moves_both_ways_between_torch_and_the_fast_decoder():
    model = make("conv/conv/conformer", [2, 3], **POOLED)
    x = tokens(2, 70)
    with torch.no_grad():
        full = model(x)
        state = model.init_state(2)
        parts = [model(x[:, :13], state=state)]
        prog = compile_model(model, 2)
        parts.append(torch.from_numpy(prog.teacher_forced(state, x[:, 13:30].numpy()).transpose(1, 0, 2)))
        parts.append(model(x[:, 30:41], state=state))
        parts.append(torch.from_numpy(prog.teacher_forced(state, x[:, 41:].numpy()).transpose(1, 0, 2)))
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=1e-9)


def test_float32_fast_step_matches_forward():
    model = make(dtype=torch.float32)
    x = tone(200)
    with torch.no_grad():
        full = model(x)
        state = model.init_state(1)
        model(x[:, :50], state=state)
    got = compile_model(model, 1).teacher_forced(state, x[:, 50:].numpy()).transpose(1, 0, 2)
    np.testing.assert_allclose(got, full[:, 50:].numpy(), rtol=0, atol=2e-4)


@pytest.mark.parametrize("sampling", [{}, {"top_p": 0.8, "temperature": 0.7}], ids=["plain", "top_p"])
def test_fast_and_reference_generate_the_same(sampling):
    model = make("conv/conv/conformer", [2, 3], **POOLED)
    runs = {}
    for backend in ("fast", "torch"):
        dec = start(model, batch_size=2, seed=3, prompt=np.sin(np.arange(37) / 3).astype(np.float32) * 0.5,
                    backend=backend, **sampling)
        runs[backend] = np.concatenate([dec.run(7), dec.run(40)], axis=1)
    np.testing.assert_array_equal(runs["fast"], runs["torch"])


def test_checkpoints_without_the_path_load_unchanged(tmp_path):
    import json

    model = WaveLM(tiny("conformer", [2, 3])).eval()
    model.save_pretrained(tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    for k in ("lpc_order", "lpc_window", "lpc_hop"):          # as written before the path existed
        meta["model"].pop(k)
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    back = WaveLM.from_pretrained(tmp_path / "ck")
    assert back.lpc is None and back.config.lpc_order == 0
    x = tokens(1, 40)
    torch.testing.assert_close(back(x), model(x))


def test_config_refuses_a_window_shorter_than_hop_plus_order():
    with pytest.raises(ValueError, match="lpc_window"):
        tiny("conformer", lpc_order=8, lpc_window=16, lpc_hop=16)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_numba_lpc_kernel_matches_the_torch_path(dtype):
    """Training and scoring on CPU compute the path with the decoder's numba step
    (decode.fast.use_lpc_kernel): the same logits as the torch module, full and chunked."""
    from wavelm.decode.fast import use_lpc_kernel

    model = make("conv/conv/conformer", [2, 3], dtype=dtype, **POOLED)
    x = torch.cat([tone(150), tokens(1, 150)])
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    with torch.no_grad():
        ref = model(x)
        assert use_lpc_kernel(model)
        try:
            full = model(x)
            state = model.init_state(2)
            chunks = torch.cat([model(x[:, t:t + 37], state=state) for t in range(0, 148, 37)], 1)
            model.lpc.kernel = None                            # and the torch path continues its state
            rest = model(x[:, 148:], state=state)
        finally:
            model.lpc.kernel = None
    torch.testing.assert_close(full, ref, rtol=0, atol=tol)
    torch.testing.assert_close(torch.cat([chunks, rest], 1), ref, rtol=0, atol=tol)


def test_training_step_with_the_kernel_has_gradients():
    """The path's inputs and prior are constants: gradients reach every weight, the same ones
    through the numba path as through the torch one."""
    from wavelm.decode.fast import use_lpc_kernel

    grads = []
    for kernel in (False, True):
        model = make(dtype=torch.float32).train()
        if kernel:
            use_lpc_kernel(model)
        x = tone(100)
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1])[0], x[0, 1:])
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    assert all(g.abs().sum() > 0 for g in grads[0].values())
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-3, atol=1e-5)


def test_compiled_model_with_the_kernel_follows_eager():
    """train --compile: the numba step is a graph break for torch.compile, not a trace."""
    from wavelm.decode.fast import use_lpc_kernel

    model = make(dtype=torch.float32)
    use_lpc_kernel(model)
    x = tone(200)
    try:
        with torch.no_grad():
            want = model(x)
            got = torch.compile(model)(x)
    finally:
        torch._dynamo.reset()        # other tests compile WaveLM.forward at other shapes
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
