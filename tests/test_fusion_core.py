"""Fusion core: metrics (incl. MMSA definitions), Shapley, heads, determinism, protocols, missing data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clmer_fusion.data import FusionData
from clmer_fusion.explain import explain, shapley
from clmer_fusion.fit import TrainConfig, fit
from clmer_fusion.metrics import classification_metrics, confusion, regression_metrics, score
from clmer_fusion.protocols import make_folds
from clmer_fusion.synthetic import make_synthetic
from clmer_fusion.train import run


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_classification_metrics_hand_computed():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    p = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    m = classification_metrics(y, p, 3)
    assert m["war"] == pytest.approx(6 / 8)
    assert m["uar"] == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    f1 = [2 * 3 / (4 + 3), 2 * 1 / (2 + 2), 2 * 2 / (2 + 3)]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert m["weighted_f1"] == pytest.approx((4 * f1[0] + 2 * f1[1] + 2 * f1[2]) / 8)
    assert confusion(y, p, 3).tolist() == [[3, 1, 0], [0, 1, 1], [0, 0, 2]]


def test_mmsa_regression_mosei_definitions():
    t = np.array([-3.0, -1.2, 0.0, 0.4, 2.6, 1.0])
    p = np.array([-2.0, 0.3, 0.2, 0.6, 3.5, -0.4])
    m = regression_metrics(t, p, "mosei")
    assert m["mae"] == pytest.approx(np.mean(np.abs(p - t)))
    assert m["corr"] == pytest.approx(np.corrcoef(p, t)[0, 1])
    # has0: >= 0 vs < 0 over all: truth [F,F,T,T,T,T], pred [F,T,T,T,T,F] -> 4/6
    assert m["acc2_has0"] == pytest.approx(4 / 6)
    # non0 drops truth == 0: truth [F,F,T,T,T], pred [F,T,T,T,F] -> 3/5
    assert m["acc2_non0"] == pytest.approx(3 / 5)
    # acc7: round(clip(.,-3,3)): t [-3,-1,0,0,3,1] p [-2,0,0,1,3,0] -> equal at idx 2,4 -> 2/6
    assert m["acc7"] == pytest.approx(2 / 6)
    # acc3: clip to [-1,1] then round: t [-1,-1,0,0,1,1] p [-1,0,0,1,1,0] -> idx 0,2,4 -> 3/6
    assert m["acc3"] == pytest.approx(3 / 6)


def test_mmsa_regression_sims_bins():
    t = np.array([-0.9, -0.1, 0.0, 0.05, 0.1, 0.8])
    p = np.array([-0.8, -0.2, 0.0, 0.2, 0.1, 0.6])
    m = regression_metrics(t, p, "sims")
    # 2 bins (<=0 | >0): t [0,0,0,1,1,1] p [0,0,0,1,1,1]
    assert m["acc2"] == 1.0
    # 3 bins edges -0.1, 0.1 (right-closed): t [0,0,1,1,1,2] p [0,0,1,2,1,2]
    assert m["acc3"] == pytest.approx(5 / 6)
    # 5 bins edges -0.7,-0.1,0.1,0.7: t [0,1,2,2,2,4] p [0,1,2,3,2,3]
    assert m["acc5"] == pytest.approx(4 / 6)


def test_bootstrap_ci_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    p = np.where(rng.random(300) < 0.7, y, (y + 1) % 3)
    s = score("classification", y, p, 3, ci=200)
    assert s["war_lo"] < s["war"] < s["war_hi"]
    assert 0.02 < s["war_hi"] - s["war_lo"] < 0.2


def test_shapley_exact_on_known_games():
    players = ["a", "b", "c"]
    from clmer_fusion.explain import all_subsets
    additive = {s: sum({"a": 1.0, "b": 2.0, "c": 3.0}[p] for p in s) for s in all_subsets(players)}
    assert shapley(additive, players) == pytest.approx({"a": 1.0, "b": 2.0, "c": 3.0})
    # glove game: a owns a left glove, b and c right gloves; a pair is worth 1
    glove = {s: float("a" in s and ("b" in s or "c" in s)) for s in all_subsets(players)}
    assert shapley(glove, players) == pytest.approx({"a": 2 / 3, "b": 1 / 6, "c": 1 / 6})


@pytest.fixture(scope="module")
def synth():
    return make_synthetic(n=1200, dims=(12, 12, 12), sep=5.0, seed=3)


@pytest.mark.parametrize("head", ["linear", "mlp", "late", "attention", "unified", "disentangled"])
def test_every_head_learns_utterance_level(synth, head):
    res = run(synth, TrainConfig(head=head, hidden=32, seed=0, lr=1e-2, max_epochs=60), "splits")
    test = next(r for r in res.rows if r["set"] == "test")
    assert test["war"] > 0.7, (head, test)          # chance is 0.25, Bayes about 0.93
    assert res.predictions.columns[:5] == ["clip_id", "fold", "set", "label", "pred"]


def test_temporal_head_and_attention_pooling_on_frames():
    data = make_synthetic(n=800, dims=(8, 8), modalities=("a", "v"), shares=(0.6, 0.4), frames=6, sep=5.0, seed=1)
    assert data.level == "frame" and data.mask["a"].sum(1).min() >= 2
    for head, pool in (("temporal", "mean"), ("mlp", "attention")):
        res = run(data, TrainConfig(head=head, pool=pool, hidden=16, max_epochs=40), "splits")
        assert next(r for r in res.rows if r["set"] == "test")["war"] > 0.6, head


def test_regression_target_uses_mmsa_metrics():
    data = make_synthetic(n=900, dims=(10, 10, 10), sep=5.0, task="regression", seed=2)
    res = run(data, TrainConfig(head="mlp", hidden=32, max_epochs=60), "splits")
    test = next(r for r in res.rows if r["set"] == "test")
    assert {"mae", "corr", "acc2_has0", "acc2_non0", "acc7", "f1_has0"} <= set(test)
    assert test["corr"] > 0.6 and test["mae"] < 1.5


def test_same_seed_same_numbers_different_seed_different(synth):
    cfg = TrainConfig(head="mlp", hidden=32, seed=7, batch_size=256, max_epochs=15, dropout=0.2)
    fold = make_folds(synth, "splits")[0]
    tr, va = synth.take(fold.train), synth.take(fold.val)
    a = fit(tr, va, cfg).predict(va)
    b = fit(tr, va, cfg).predict(va)
    c = fit(tr, va, TrainConfig(**{**cfg.to_dict(), "seed": 8})).predict(va)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_early_stopping_restores_best_epoch(synth):
    fold = make_folds(synth, "splits")[0]
    tr, va = synth.take(fold.train), synth.take(fold.val)
    m = fit(tr, va, TrainConfig(head="linear", patience=3, max_epochs=500, select="war"))
    assert m.epochs == m.best_epoch + 3 and m.epochs < 500
    best = max(h["val_metric"] for h in m.history)
    assert m.history[m.best_epoch - 1]["val_metric"] == best
    m = fit(tr, va, TrainConfig(head="mlp", patience=5, max_epochs=500, lr=1e-2))       # default: val loss
    assert m.epochs == m.best_epoch + 5 and m.epochs < 500
    assert m.history[m.best_epoch - 1]["val_loss"] == min(h["val_loss"] for h in m.history)
    # the restored weights are the best epoch's: predicting val again gives that epoch's loss
    probs = m.predict(va)
    nll = -np.log(probs[np.arange(va.n), va.y]).mean()
    assert nll == pytest.approx(m.history[m.best_epoch - 1]["val_loss"], rel=1e-4)


def test_class_weights_raise_minority_recall():
    rng = np.random.default_rng(0)
    n = 1500
    y = (rng.random(n) < 0.1).astype(np.int64)                 # 10 % minority class
    x = {"a": (rng.normal(size=(n, 4)) + y[:, None] * 0.8).astype(np.float32)}
    data = FusionData([str(i) for i in range(n)], ["a"], x, np.ones((n, 1), bool), y, classes=["maj", "min"],
                      meta=make_synthetic(n=n).meta)
    plain = run(data, TrainConfig(head="linear", select="loss", lr=3e-2, max_epochs=100), "splits")
    weighted = run(data, TrainConfig(head="linear", select="loss", lr=3e-2, max_epochs=100, class_weights=True), "splits")
    uar = lambda r: next(x for x in r.rows if x["set"] == "test")["uar"]  # noqa: E731
    assert uar(weighted) > uar(plain) + 0.05


def test_protocols_partition_rows(synth):
    folds = make_folds(synth, {"name": "kfold", "k": 5})
    tests = np.concatenate([f.tests["test"] for f in folds])
    assert len(folds) == 5 and sorted(tests.tolist()) == list(range(synth.n))
    for f in folds:
        assert not set(f.train) & set(f.tests["test"]) and not set(f.train) & set(f.val)
    logo = make_folds(synth, {"name": "logo", "column": "speaker"})
    spk = synth.column("speaker")
    assert all(len(set(spk[f.tests["test"]])) == 1 and spk[f.tests["test"]][0] not in set(spk[f.train]) for f in logo)
    xl = make_folds(synth, "crosslingual")
    lang = synth.column("language")
    assert [f.name for f in xl] == ["language=en", "language=zh"]
    assert set(lang[xl[0].train]) == {"en"} and set(lang[xl[0].tests["cross:zh"]]) == {"zh"}


def test_crosslingual_reports_retention(synth):
    res = run(synth, TrainConfig(head="linear", max_epochs=30), "crosslingual")
    ret = [r for r in res.rows if r["set"].startswith("retention:")]
    assert len(ret) == 2
    for r in ret:
        rows = {x["set"]: x for x in res.rows if x["fold"] == r["fold"]}
        src = next(k for k in rows if k.startswith("in:"))
        cross = "cross:" + r["set"].split(":")[1]
        assert r["war"] == pytest.approx(rows[cross]["war"] / rows[src]["war"])


def test_missing_policy_drop_and_embed():
    data = make_synthetic(n=1000, dims=(8, 8, 8), missing_rate=0.3, sep=5.0, seed=4)
    dropped = data.apply_missing("drop")
    assert dropped.present.all() and dropped.n == int(data.present.all(1).sum())
    assert dropped.missing_report["dropped"] == data.n - dropped.n
    embedded = data.apply_missing("embed")
    assert embedded.n == data.n and embedded.missing_report["missing_per_modality"]["text"] == int((~data.present[:, 0]).sum())
    res = run(embedded, TrainConfig(head="attention", hidden=32, max_epochs=60), "splits")
    assert next(r for r in res.rows if r["set"] == "test")["war"] > 0.6
    assert res.missing_report["policy"] == "embed"
    head = res.models or None
    assert head is None  # models are not kept unless asked


def test_attention_weights_ignore_absent_modalities(synth):
    fold = make_folds(synth, "splits")[0]
    m = fit(synth.take(fold.train), synth.take(fold.val), TrainConfig(head="attention", hidden=16, max_epochs=5))
    xs, masks, present, _ = m.tensors(synth.take(fold.val), torch.device("cpu"))
    present[:, 1] = False
    with torch.no_grad():
        w = m.head.eval()(xs, masks, present)["weights"]
    assert torch.all(w[:, 1] == 0) and torch.allclose(w.sum(1), torch.ones(len(w)))


def test_shapley_recovers_known_shares_both_methods():
    data = make_synthetic(n=3000, dims=(8, 8, 8), shares=(0.5, 0.3, 0.2), sep=6.0, seed=5)
    cfg = TrainConfig(head="attention", hidden=16, lr=1e-2, max_epochs=40)
    for method in ("retrain", "mask"):
        exp = explain(data, cfg, method=method)[0]
        shares = exp.shares()
        assert shares["text"] == pytest.approx(0.5, abs=0.06), (method, shares)
        assert shares["audio"] == pytest.approx(0.3, abs=0.06), (method, shares)
        assert shares["visual"] == pytest.approx(0.2, abs=0.06), (method, shares)
        groups = exp.groups["group"].to_list()
        assert groups[0] == "all" and "label=c0" in groups and "language=zh" in groups
        # per-clip values are exact Shapley: they add up to p_full - p_empty
        assert exp.clip_shapley.height == int((data.column("split") == "test").sum())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fit_is_deterministic_and_learns(synth):
    fold = make_folds(synth, "splits")[0]
    tr, va = synth.take(fold.train), synth.take(fold.val)
    cfg = TrainConfig(head="attention", hidden=32, lr=1e-2, max_epochs=40, device="cuda")
    a, b = fit(tr, va, cfg), fit(tr, va, cfg)
    assert next(a.head.parameters()).is_cuda
    pa, pb = a.predict(va), b.predict(va)
    assert np.array_equal(pa, pb)
    assert (pa.argmax(1) == va.y).mean() > 0.7
