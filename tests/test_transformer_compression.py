"""Chapter 08: the transformer, its data and the compression / attribution references, against oracles."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib import transformer as TR, transformer_compression as TC


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return TR.TinyGPT(**kw).eval()


def _data(n=200):
    return TR.recall(n=n, seed=3)


# ----------------------------------------------------------------------------- model and data
def test_recall_answer_is_the_value_of_the_queried_key():
    s, vocab = _data(), TR.recall_vocab(8, 8)
    for X, y, m in ((s.X_train, s.y_train, s.masks_train), (s.X_test, s.y_test, s.masks_test)):
        assert (m.sum(1) == 1).all()
        for seq, ans, mask in zip(X.tolist(), y.tolist(), m):
            pairs, query = seq[:6], seq[-1] - vocab["queries"][0]
            assert seq[-2] == vocab["marker"] and len({p // 8 for p in pairs}) == 6      # distinct keys
            hit = [i for i, p in enumerate(pairs) if p // 8 == query]
            assert hit == [int(mask.nonzero())] and ans == vocab["values"][0] + pairs[hit[0]] % 8


def test_recall_is_deterministic_by_seed_and_validates():
    a, b, c = TR.recall(n=50, seed=1), TR.recall(n=50, seed=1), TR.recall(n=50, seed=2)
    assert torch.equal(a.X_train, b.X_train) and not torch.equal(a.X_train, c.X_train)
    with pytest.raises(ValueError, match="n_keys must be an int >= n_pairs"):
        TR.recall(n=50, n_pairs=9, n_keys=8)


def test_causal_mask_future_tokens_do_not_change_earlier_logits():
    model, s = _model(), _data()
    X = s.X_train[:16]
    changed = X.clone()
    changed[:, 5:] = s.X_train[16:32, 5:]
    with torch.no_grad():
        a, b = model.sequence_logits(X), model.sequence_logits(changed)
    assert torch.equal(a[:, :5], b[:, :5]) and not torch.allclose(a[:, 5:], b[:, 5:])


def test_shapes_tied_head_and_attention_rows():
    model = _model()
    X = _data().X_train[:4]
    assert model(X).shape == (4, 81) and model.sequence_logits(X).shape == (4, 8, 81)
    assert model.lm_head.weight is model.wte.weight
    for a in model.attentions(X):
        assert a.shape == (4, 4, 8, 8)
        torch.testing.assert_close(a.sum(-1), torch.ones(4, 4, 8))
        assert (a.triu(1) == 0).all()
    with pytest.raises(ValueError, match="idx must be an int64 tensor"):
        model(torch.zeros(2, 8))


def test_kv_cache_gives_the_same_logits_and_the_formula_bytes():
    model, X = _model(), _data().X_train[:5]
    with torch.no_grad():
        full = model.sequence_logits(X)[:, -1]
    torch.testing.assert_close(TR.generate_logits(model, X, use_cache=True), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(TR.generate_logits(model, X, use_cache=False), full, rtol=1e-5, atol=1e-5)
    cache = TR.KVCache(2)
    with torch.no_grad():
        model.sequence_logits(X, cache=cache)
    assert cache.nbytes() == 2 * 2 * 64 * 8 * 5 * 4 == TC.kv_cache_bytes(2, 4, 16, 8, batch=5, bytes_per_element=4)


# ----------------------------------------------------------------------------- quantization
def test_quantize_groupwise_matches_torch_fake_quantize_per_channel():
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for bits, G in ((4, 8), (3, 32), (8, 16)):
        rows = w.reshape(-1, G)
        qmax = 2 ** (bits - 1) - 1
        scale = rows.abs().amax(1) / qmax
        ref = torch.fake_quantize_per_channel_affine(rows.float(), scale.float(), torch.zeros(len(rows), dtype=torch.int32),
                                                     0, -qmax, qmax).reshape(w.shape).double()
        mine = TC.quantize_groupwise(w, bits, G)
        step = scale.repeat_interleave(G).reshape(w.shape)
        assert mine.dtype == torch.float64
        assert ((mine - ref).abs() <= 1e-5 * step.max() + (mine - ref).abs().gt(1e-5) * step).all()
        assert ((mine - w).abs() <= step / 2 + 1e-12).all()                    # error at most half a step


def test_quantize_groupwise_hand_case_and_errors():
    w = torch.tensor([[1.0, -0.5, 0.2, 0.0], [0.3, 0.6, -0.9, 0.45], [0.0, 0.0, 0.0, 0.0]])
    expected = torch.tensor([[1.0, 0.0, 0.2, 0.0], [0.0, 0.6, -0.9, 0.0], [0.0, 0.0, 0.0, 0.0]])   # halves to even
    torch.testing.assert_close(TC.quantize_groupwise(w, 2, 2), expected)
    for args, match in (((w, 4, 3), "group_size must be"), ((w, 1, 2), "bits must be"), ((w[0], 4, 2), "weight must be 2-D")):
        with pytest.raises(ValueError, match=match):
            TC.quantize_groupwise(*args)


def test_pack_int4_round_trip_and_half_the_bytes():
    codes = torch.randint(-8, 8, (6, 10), generator=torch.Generator().manual_seed(1)).to(torch.int8)
    packed = TC.pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.nbytes == codes.nbytes // 2
    assert torch.equal(TC.unpack_int4(packed, codes.shape), codes)


def test_stored_bytes_counts_codes_scales_and_float16_rest():
    model = _model()
    linears = TC.block_linears(model)
    n_lin = sum(l.weight.numel() for l in linears.values())
    n_all = sum(p.numel() for p in model.parameters())
    assert TC.stored_bytes(model, None, None) == 2 * n_all
    groups = sum(l.weight.shape[0] * l.weight.shape[1] // 32 for l in linears.values())
    assert TC.stored_bytes(model, 4, 32) == 2 * (n_all - n_lin) + n_lin // 2 + 2 * groups


def test_gptq_lowers_the_layer_output_error_below_rtn():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 32, generator=g, dtype=torch.float64) @ torch.randn(32, 32, generator=g, dtype=torch.float64)
    W = torch.randn(16, 32, generator=g, dtype=torch.float64)
    H = 2 * X.T @ X / len(X)
    for bits, G in ((3, 32), (2, 8)):
        rtn, gptq = TC.quantize_groupwise(W, bits, G), TC.gptq_quantize(W, H, bits, G)
        err = lambda Q: float(((X @ W.T - X @ Q.T) ** 2).sum())          # noqa: E731
        assert err(gptq) < err(rtn)
        scales = gptq.reshape(16, -1, G).abs().amax(2, keepdim=True)          # every value on its group's grid
        qmax = 2 ** (bits - 1) - 1
        codes = gptq.reshape(16, -1, G) / (scales / qmax).clamp_min(1e-12)
        assert torch.allclose(codes, codes.round(), atol=1e-6) and codes.abs().max() <= qmax + 1e-9


# ----------------------------------------------------------------------------- SmoothQuant
def test_smoothquant_scales_closed_form_and_function_preserved():
    s = TC.smoothquant_scales(torch.tensor([16.0, 1.0, 0.0]), torch.tensor([[1.0, -4.0, 0.0], [0.5, 1.0, 0.0]]), 0.5)
    torch.testing.assert_close(s, torch.tensor([4.0, 0.5, 1.0]))        # sqrt(16)/1, 1/sqrt(4), floors: 1e-5^.5/1e-5^.5
    model, X = _model(), _data().X_train[:32]
    planted = TC.plant_outliers(model, [1, 5], 80.0)
    smoothed = TC.smooth(planted, X, 0.5)
    with torch.no_grad():
        ref = model.sequence_logits(X)
        torch.testing.assert_close(planted.sequence_logits(X), ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(smoothed.sequence_logits(X), ref, rtol=1e-4, atol=1e-5)
    acts = TC.linear_inputs(planted, X, ["h.0.attn.c_attn"])["h.0.attn.c_attn"].abs().amax(0)
    assert acts[[1, 5]].min() > 10 * acts.median()
    with pytest.raises(ValueError, match="alpha must be"):
        TC.smoothquant_scales(torch.ones(3), torch.ones(2, 3), 1.5)


# ----------------------------------------------------------------------------- heads and attributions
def test_attention_rollout_hand_cases():
    eye = torch.eye(3).expand(1, 2, 3, 3)
    torch.testing.assert_close(TC.attention_rollout([eye, eye]), torch.eye(3).expand(1, 3, 3))
    a1 = torch.tensor([[1.0, 0, 0], [1, 0, 0], [1, 0, 0]]).expand(1, 1, 3, 3)
    a2 = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 1, 0]]).expand(1, 1, 3, 3)
    h = lambda a: 0.5 * a[0, 0] + 0.5 * torch.eye(3)                     # noqa: E731
    torch.testing.assert_close(TC.attention_rollout([a1, a2])[0], h(a2) @ h(a1))
    with pytest.raises(ValueError):
        TC.attention_rollout([])


def test_head_gradients_equal_a_per_example_loop_and_finite_differences():
    model, s = _model(), _data()
    X, y = s.X_train[:24], s.y_train[:24]
    g = TC.head_gradients(model, X, y)
    assert g.shape == (24, 2, 4)
    for i in range(24):                                    # brute force: one backward per example
        xi = torch.ones(2, 4, requires_grad=True)
        loss = F.cross_entropy(model(X[i:i + 1], head_mask=xi), y[i:i + 1])
        torch.testing.assert_close(g[i], torch.autograd.grad(loss, xi)[0], rtol=1e-4, atol=1e-6)
    eps = 1e-3
    for l, h in ((0, 1), (1, 2)):                          # and the gate's finite difference
        mask = torch.ones(2, 4)
        mask[l, h] += eps
        up = F.cross_entropy(model(X[:1], head_mask=mask), y[:1])
        mask[l, h] -= 2 * eps
        down = F.cross_entropy(model(X[:1], head_mask=mask), y[:1])
        assert abs(float((up - down).detach()) / (2 * eps) - float(g[0, l, h])) < 1e-3


def test_head_importance_averages_absolute_per_example_gradients():
    model, s = _model(), _data()
    X, y = s.X_train[:64], s.y_train[:64]
    g = TC.head_gradients(model, X, y)
    torch.testing.assert_close(TC.head_importance(model, X, y), g.abs().mean(0))
    # a constructed case where the mean gradient cancels: two examples whose gate gradients for
    # one head have opposite signs
    l, h = 0, int(((g[:, 0] > 0).any(0) & (g[:, 0] < 0).any(0)).nonzero()[0])
    i, j = int((g[:, l, h] > 0).nonzero()[0]), int((g[:, l, h] < 0).nonzero()[0])
    pair_X, pair_y = X[[i, j]], y[[i, j]]
    imp = TC.head_importance(model, pair_X, pair_y)
    xi = torch.ones(2, 4, requires_grad=True)
    mean_grad = torch.autograd.grad(F.cross_entropy(model(pair_X, head_mask=xi), pair_y), xi)[0]
    gi, gj = float(g[i, l, h]), float(g[j, l, h])
    assert float(imp[l, h]) == pytest.approx((abs(gi) + abs(gj)) / 2, rel=1e-4)
    assert float(mean_grad[l, h].abs()) == pytest.approx(abs(gi + gj) / 2, rel=1e-4, abs=1e-7)
    assert float(imp[l, h]) > float(mean_grad[l, h].abs()) + min(abs(gi), abs(gj)) * 0.99


def test_integrated_gradients_completeness_and_hit_rate_chance():
    model, s = _model(), _data()
    X, y = s.X_train[:16], s.y_train[:16]
    ig = TC.token_attributions(model, X, y, "IG", steps=64)
    tok = model.embed(X).detach()
    with torch.no_grad():
        gap = TC._target_logit(model, tok, y) - TC._target_logit(model, torch.zeros_like(tok), y)
    torch.testing.assert_close(ig.sum(1), gap, rtol=1e-2, atol=1e-3)
    rng = torch.Generator().manual_seed(0)
    masks = TR.recall(n=20000, seed=0).masks_train
    rate = TC.hit_rate(torch.rand(masks.shape, generator=rng), masks, 6).mean()
    assert abs(rate - 1 / 6) < 0.015
    with pytest.raises(ValueError, match="method must be one of"):
        TC.token_attributions(model, X, y, "saliency")


# ----------------------------------------------------------------------------- quantized KV cache
def test_quantized_kv_cache_bytes_error_bound_and_decoding():
    model, X = _model(), _data().X_train[:5]
    cache = TC.QuantizedKVCache(2, bits=8)
    with torch.no_grad():
        model.sequence_logits(X, cache=cache)
    # int8 codes (1 byte per element) + one float16 scale per (layer, K/V, sequence, head, position)
    assert cache.nbytes() == 2 * 2 * 4 * 8 * 5 * (16 * 1 + 2) == TC.kv_cache_bytes(2, 4, 16, 8, 5, 1, scale_bytes=2)
    assert cache.codes["k"][0].dtype == torch.int8 and cache.scales["v"][1].dtype == torch.float16
    # layer 0's cached vectors (same inputs as a float cache's, the oracle) are within half a step of it
    ref = TR.KVCache(2)
    with torch.no_grad():
        model.sequence_logits(X, cache=ref)
    for name, floats in (("k", ref.k), ("v", ref.v)):
        scale = cache.scales[name][0].float()
        deq = cache.codes[name][0].float() * scale
        assert ((deq - floats[0]).abs() <= scale / 2 + 1e-6).all()
        assert (cache.codes[name][0].abs().amax(-1) == 127).all()                # the max sets the scale
    float_logits = TC.cached_decode(model, X, TR.KVCache(2))
    torch.testing.assert_close(float_logits, TR.generate_logits(model, X, use_cache=True))
    int8_logits = TC.cached_decode(model, X, TC.QuantizedKVCache(2, 8))
    int3_logits = TC.cached_decode(model, X, TC.QuantizedKVCache(2, 3))
    err8, err3 = (float((z - float_logits).abs().max()) for z in (int8_logits, int3_logits))
    assert 0 < err8 < err3                                                      # fewer bits, larger error
    with pytest.raises(ValueError, match="cache must be empty"):
        TC.cached_decode(model, X, cache)
    with pytest.raises(ValueError, match="bits must be"):
        TC.QuantizedKVCache(2, 9)


# ----------------------------------------------------------------------------- dequantize-then-matmul
def test_dequant_linear_stores_packed_codes_and_matches_rtn():
    model, X = _model(), _data().X_train[:8]
    for bits, G in ((4, 32), (8, None), (3, 16)):
        q = TC.dequantizing_model(model, bits, G)
        with torch.no_grad():
            torch.testing.assert_close(q(X), TC.quantize_weights(model, bits, G)(X), rtol=1e-2, atol=2e-3)
        layer = q.h[0].mlp.c_fc
        assert isinstance(layer, TC.DequantLinear)
        n = layer.shape[0] * layer.shape[1]
        assert layer.codes.nbytes == (n // 2 if bits == 4 else n)                 # int4 two per byte
        assert layer.scales.shape == (layer.shape[0], layer.shape[1] // (G or layer.shape[1]))
    out = TC.dequant_latency(model, X[:1], [(4, 32)], rounds=2, repeats=1)
    assert out["float32"].n == 2 and out[(4, 32)].n == 2 and out["slowdown"][(4, 32)].ratio > 0


# ----------------------------------------------------------------------------- AWQ
def test_awq_scales_and_search_undo_a_planted_outlier():
    torch.testing.assert_close(TC.awq_scales(torch.tensor([4.0, 1.0, 0.25]), 0.0), torch.ones(3))
    torch.testing.assert_close(TC.awq_scales(torch.tensor([4.0, 1.0, 0.25]), 0.5), torch.tensor([2.0, 1.0, 0.5]))
    g = torch.Generator().manual_seed(0)
    x, W = torch.randn(256, 32, generator=g), torch.randn(16, 32, generator=g)
    x[:, 5] *= 100.0                                                             # a salient input channel ...
    W[:, 5] /= 100.0                                                             # ... with a small weight column
    found = TC.awq_search(W, x, 4, 32, (0.0, 0.5, 1.0))
    assert found["errors"][0] == max(found["errors"]) and found["alpha"] > 0    # RTN (alpha 0) is the worst
    assert found["errors"][(0.0, 0.5, 1.0).index(found["alpha"])] == min(found["errors"])
    # folding keeps the float function of the model; quantizing at 8 bits stays close
    model, X = _model(), _data().X_train[:32]
    planted = TC.plant_outliers(model, [1, 5], 100.0)
    q, chosen = TC.awq(planted, X, 8, 32)
    assert set(chosen) == {"h.0.attn.c_attn", "h.1.attn.c_attn", "h.0.mlp.c_fc", "h.1.mlp.c_fc"}
    assert chosen["h.0.attn.c_attn"] > 0.5
    with torch.no_grad():
        torch.testing.assert_close(q.sequence_logits(X), model.sequence_logits(X), rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="alpha must be"):
        TC.awq_scales(torch.ones(3), -0.1)


# ----------------------------------------------------------------------------- AWQ's mixed-precision contrast
def test_quantize_keep_salient_keep_zero_is_plain_rtn_bit_for_bit():
    model, X = _model(), _data().X_train[:16]
    for bits, G in ((2, 32), (3, None)):
        rtn = TC.quantize_weights(model, bits, G)
        for by in ("activation", "weight", "random"):
            q, kept = TC.quantize_keep_salient(model, bits, G, 0, by=by, calibration=X)
            assert all(k.numel() == 0 for k in kept.values())
            for (n, p), (_, r) in zip(q.named_parameters(), rtn.named_parameters()):
                assert torch.equal(p, r), (by, n)


def test_quantize_keep_salient_kept_columns_are_float_the_rest_rtn():
    model, X = _model(), _data().X_train[:16]
    q, kept = TC.quantize_keep_salient(model, 2, 32, 0.05, by="activation", calibration=X)
    rtn = TC.quantize_weights(model, 2, 32)
    for name, layer in TC.block_linears(q).items():
        w, r = TC.block_linears(model)[name].weight, TC.block_linears(rtn)[name].weight
        rest = torch.ones(layer.in_features, dtype=torch.bool)
        rest[kept[name]] = False
        assert torch.equal(layer.weight[:, kept[name]], w[:, kept[name]])       # float, exactly
        assert torch.equal(layer.weight[:, rest], r[:, rest])                   # RTN's values, exactly
        assert not torch.equal(w[:, kept[name]], r[:, kept[name]])              # RTN would have changed them
    assert torch.equal(q.wte.weight, model.wte.weight) and torch.equal(q.h[0].ln_1.bias, model.h[0].ln_1.bias)
    everything, _ = TC.quantize_keep_salient(model, 2, 32, 1.0, by="weight")
    for (n, p), (_, f) in zip(everything.named_parameters(), model.named_parameters()):
        assert torch.equal(p, f), n                                              # keep=1.0: all columns float


def test_quantize_keep_salient_counts_kept_columns():
    model = _model()                                                             # in_features 64 and 128
    widths = {n: l.in_features for n, l in TC.block_linears(model).items()}
    for keep, per_width in ((0.01, {64: 1, 128: 1}), (0.05, {64: 3, 128: 6}), (0.001, {64: 1, 128: 1}),
                            (2, {64: 2, 128: 2}), (1.0, {64: 64, 128: 128})):
        _, kept = TC.quantize_keep_salient(model, 4, None, keep, by="weight")
        for name, idx in kept.items():
            assert idx.numel() == per_width[widths[name]] == len(set(idx.tolist())), (keep, name)


def test_quantize_keep_salient_activation_finds_planted_channels_weight_does_not():
    model, X = _model(), _data().X_train[:32]
    planted = TC.plant_outliers(model, [5, 20, 33], 100.0)          # inputs x100, weight columns /100
    _, by_act = TC.quantize_keep_salient(planted, 2, 32, 3, by="activation", calibration=X)
    _, by_w = TC.quantize_keep_salient(planted, 2, 32, 3, by="weight")
    assert set(by_act["h.0.attn.c_attn"].tolist()) == {5, 20, 33}
    assert not set(by_w["h.0.attn.c_attn"].tolist()) & {5, 20, 33}
    # weight: the largest column norms, hand-made
    with torch.no_grad():
        model.h[1].mlp.c_proj.weight[:, [7, 100]] *= 50.0
    _, kept = TC.quantize_keep_salient(model, 2, 32, 2, by="weight")
    assert set(kept["h.1.mlp.c_proj"].tolist()) == {7, 100}


def test_quantize_keep_salient_random_choice_is_seeded():
    model = _model()
    a = TC.quantize_keep_salient(model, 3, 32, 0.05, by="random", seed=4)
    b = TC.quantize_keep_salient(model, 3, 32, 0.05, by="random", seed=4)
    c = TC.quantize_keep_salient(model, 3, 32, 0.05, by="random", seed=5)
    assert all(torch.equal(a[1][n], b[1][n]) for n in a[1])
    assert all(torch.equal(p, r) for p, r in zip(a[0].parameters(), b[0].parameters()))
    assert any(not torch.equal(a[1][n], c[1][n]) for n in a[1])
    for idx in a[1].values():
        assert len(set(idx.tolist())) == idx.numel() in (3, 6)                  # distinct; 5 % of 64 or 128


def test_keep_salient_study_scores_the_three_choices_on_the_same_examples():
    model, data = _model(), _data(200)
    X, y, calib = data.X_test[:40], data.y_test[:40], data.X_train[:20]
    study = TC.keep_salient_study(model, X, y, calib, 2, 32, 0.05, draws=3)
    assert study["random"].shape == (3, 40) and study["activation"].shape == study["weight"].shape == (40,)
    q, kept = TC.quantize_keep_salient(model, 2, 32, 0.05, by="random", seed=2)
    np.testing.assert_array_equal(study["random"][2], TC.answer_metrics(q, X, y)["correct"])
    assert all(torch.equal(study["kept random"][2][n], kept[n]) for n in kept)
    q, kept = TC.quantize_keep_salient(model, 2, 32, 0.05, calibration=calib)
    np.testing.assert_array_equal(study["activation"], TC.answer_metrics(q, X, y)["correct"])
    with pytest.raises(ValueError, match="draws"):
        TC.keep_salient_study(model, X, y, calib, 2, 32, 0.05, draws=0)


def test_quantize_keep_salient_errors_name_the_argument():
    model, X = _model(), _data().X_train[:8]
    cases = [(dict(bits=1), ValueError, "bits must be an int in \\[2, 8\\]"),
             (dict(bits=4.0), TypeError, "bits must be an int"),
             (dict(group_size=24), ValueError, "group_size must divide"),
             (dict(group_size=0), ValueError, "group_size must be an int >= 1"),
             (dict(keep=1.5), ValueError, "keep must be a float in \\[0, 1\\] or a non-negative int"),
             (dict(keep=-1), ValueError, "keep must be"),
             (dict(keep=True), TypeError, "keep must be"),
             (dict(keep="1%"), TypeError, "keep must be"),
             (dict(keep=65), ValueError, "keep must be at most in_features = 64"),
             (dict(by="gradient"), ValueError, "by must be 'activation', 'weight' or 'random'"),
             (dict(by="activation", calibration=None), ValueError, "calibration must be"),
             (dict(calibration=[[1, 2]]), TypeError, "calibration must be a torch.Tensor"),
             (dict(seed=-1), ValueError, "seed must be an int >= 0")]
    for change, error, match in cases:
        kw = dict(bits=2, group_size=32, keep=0.01, by="random", calibration=X, seed=0) | change
        with pytest.raises(error, match=match):
            TC.quantize_keep_salient(model, kw.pop("bits"), kw.pop("group_size"), kw.pop("keep"), **kw)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        TC.quantize_keep_salient("model", 2, 32, 0.01, by="weight")


# ----------------------------------------------------------------------------- the industry library: torchao
# torchao 0.18 (pinned) is the oracle for weight-only quantization: its codes, scales, dequantized weights and the
# quantized models' outputs must be the course's full-range RTN, bit for bit, on the chapter's own model.
SETTINGS = [(8, None), (4, 32), (3, 32)]        # Int8WeightOnlyConfig per row; IntxWeightOnlyConfig, groups of 32


@pytest.fixture(scope="module")
def recall_gpt():
    from course_lib import checkpoints
    return checkpoints.load("recall_gpt").eval(), checkpoints.dataset("recall_gpt")


@pytest.mark.parametrize("bits, group", SETTINGS)
def test_full_range_group_codes_are_torchaos_codes_and_scales(recall_gpt, bits, group):
    model, _ = recall_gpt
    tao = TC.torchao_weight_only(model, bits, group)
    qmin, qmax = -2 ** (bits - 1), 2 ** (bits - 1) - 1
    used_qmin = differ_from_course = 0
    for name, layer in TC.block_linears(tao).items():
        w, ref = model.get_submodule(name).weight, layer.weight
        G = group or w.shape[1]
        assert ref.qdata.dtype == torch.int8 and (ref.zero_point == 0).all()               # symmetric, zero point 0
        codes, scale = TC.group_codes(w, bits, G, full_range=True, scale_dtype=torch.float32)
        assert torch.equal(codes, ref.qdata), name                                          # every code
        assert torch.equal(scale, ref.scale.reshape(scale.shape)), name                    # every scale, bit for bit
        amax = w.detach().reshape(w.shape[0], -1, G).abs().amax(2)
        torch.testing.assert_close(scale, amax / (qmax + 0.5), rtol=0, atol=0)             # 127.5, 7.5, 3.5
        used_qmin += int((codes == qmin).sum())
        assert int(codes.max()) <= qmax and int(codes.min()) >= qmin
        differ_from_course += int((TC.group_codes(w, bits, G, scale_dtype=torch.float32)[0] != codes).sum())
    assert used_qmin > 0                          # the extra negative code is used (the course's range has no -2^(b-1))
    assert differ_from_course > 0                 # so the course's own convention would fail this comparison


@pytest.mark.parametrize("bits, group", SETTINGS)
def test_full_range_rtn_weights_are_torchaos_dequantized_weights(recall_gpt, bits, group):
    model, _ = recall_gpt
    tao, mine = TC.torchao_weight_only(model, bits, group), TC.quantize_weights(model, bits, group, full_range=True)
    course = TC.quantize_weights(model, bits, group)
    for name, layer in TC.block_linears(tao).items():
        assert torch.equal(mine.get_submodule(name).weight, layer.weight.dequantize()), name
    assert any(not torch.equal(course.get_submodule(n).weight, l.weight.dequantize())
               for n, l in TC.block_linears(tao).items())


def test_dividing_instead_of_multiplying_by_the_reciprocal_explains_the_remaining_codes(recall_gpt):
    """torchao rounds w * fl(1/s); rounding w / s instead changes a code only where w / s lies within one float32
    ulp of a half-integer, by one code, and mostly at a group's most negative weight (w / s = -(qmax + 1/2))."""
    model, _ = recall_gpt
    for bits, group in SETTINGS:
        qmin, qmax = -2 ** (bits - 1), 2 ** (bits - 1) - 1
        n_off = n_at_negative_amax = 0
        for name, layer in TC.block_linears(model).items():
            w = layer.weight.detach()
            G = group or w.shape[1]
            codes, scale = TC.group_codes(w, bits, G, full_range=True, scale_dtype=torch.float32)
            wg = w.reshape(w.shape[0], -1, G)
            ratio = wg / scale[:, :, None]
            divided = torch.round(ratio).clamp(qmin, qmax).reshape(w.shape)
            off = divided != codes
            half_ulp_from_tie = ((ratio - ratio.floor() - 0.5).abs() <= torch.finfo(torch.float32).eps * ratio.abs())
            assert (half_ulp_from_tie.reshape(w.shape)[off]).all(), name
            assert ((divided - codes).abs()[off] == 1).all(), name
            negative_amax = (wg == -wg.abs().amax(2, keepdim=True)).reshape(w.shape)
            n_off += int(off.sum())
            n_at_negative_amax += int((off & negative_amax).sum())
        assert 0 < n_off < 0.005 * sum(l.weight.numel() for l in TC.block_linears(model).values())
        assert n_at_negative_amax >= 0.9 * n_off


@pytest.mark.parametrize("bits, group", SETTINGS)
def test_torchao_and_full_range_rtn_models_give_the_same_outputs(recall_gpt, bits, group):
    model, split = recall_gpt
    X, y = split.X_test[:500], split.y_test[:500]
    tao, mine = TC.torchao_weight_only(model, bits, group), TC.quantize_weights(model, bits, group, full_range=True)
    with torch.no_grad():
        a, b = tao(X), mine(X)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)          # int8 matmuls in torchao's order: 1e-5 apart
    assert np.array_equal(TC.answer_metrics(tao, X, y)["correct"], TC.answer_metrics(mine, X, y)["correct"])


def test_full_range_is_rtn_only():
    with pytest.raises(ValueError, match="full_range=True is implemented for method='rtn' only"):
        TC.quantize_weights(_model(), 4, 32, method="gptq", calibration=_data().X_train[:8], full_range=True)


def test_import_torchao_drops_only_the_cuda_library_lines():
    import subprocess
    import sys

    def stderr_of(code):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stderr

    bare = stderr_of("import torchao")
    if torch.version.cuda is None:                                      # the course's CPU wheel: the CUDA libraries fail
        assert "Failed to load" in bare and "_C_" in bare               # what the helper is for
    quiet = stderr_of("import logging\nfrom course_lib import transformer_compression as TC\nTC.import_torchao()\n"
                      "logging.getLogger('torchao').warning('Failed to load weights.pt')\n"
                      "logging.getLogger('torchao').warning('a real warning')")
    assert "_C_" not in quiet and "Enum subclass" not in quiet
    assert "Failed to load weights.pt" in quiet and "a real warning" in quiet   # filters are narrow and removed
