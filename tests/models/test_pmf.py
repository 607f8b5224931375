"""PMF: training lowers the loss (rating and BPR modes), the reference backend follows the same loss curve as
the C++ CPU kernels, state_dict round-trips, and the ratings task / cross-validation run end to end."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import recsys_kernels
from recsys_kernels.data import Ratings, synthetic_ratings
from recsys_kernels.models.pmf import PMF
from recsys_kernels.train.ratings_task import CONFIGS, RatingsTask, cross_validate_pmf, train_pmf

DATA = dict(num_users=60, num_items=50, rank=4, density=0.3, seed=0)


def _ratings():
    return synthetic_ratings(**DATA)


def _implicit(num_users: int = 80, num_items: int = 60, per_user: int = 12, seed: int = 0) -> Ratings:
    """Implicit feedback with a planted taste: user u picks items with probability ∝ exp(3 <p_u, q_i>)
    (synthetic_ratings picks its pairs uniformly, so its observation pattern carries nothing to rank by)."""
    rng = np.random.default_rng(seed)
    p, q = rng.normal(size=(num_users, 2)), rng.normal(size=(num_items, 2))
    logits = 3 * p @ q.T
    probs = np.exp(logits - logits.max(1, keepdims=True))
    items = np.concatenate([rng.choice(num_items, per_user, replace=False, p=row / row.sum()) for row in probs])
    users = np.repeat(np.arange(num_users), per_user)
    n = len(users)
    return Ratings(users.astype(np.int64), items.astype(np.int64), np.ones(n, np.float32), np.zeros(n, np.int64),
                   num_users, num_items)


def _curve(mode: str, steps: int = 12, backend: str | None = None) -> list[float]:
    r = _ratings()
    model = PMF(r.num_users, r.num_items, 8, mode=mode, global_mean=float(r.ratings.mean()), lr=0.05, seed=0)
    users, items = torch.from_numpy(r.users), torch.from_numpy(r.items)
    ratings = torch.from_numpy(r.ratings)
    negatives = torch.from_numpy(np.random.default_rng(0).integers(0, r.num_items, len(r)))
    losses = []
    with recsys_kernels.use_backend(backend):
        for step in range(steps):
            b = slice((step % 4) * 64, (step % 4) * 64 + 64)  # 4 fixed batches, seen 3 times each
            loss = (model.rating_loss(users[b], items[b], ratings[b]) if mode == "rating"
                    else model.bpr_loss(users[b], items[b], negatives[b]))
            loss.backward()  # the tables update themselves here
            losses.append(loss.item())
    return losses


@pytest.mark.parametrize("mode", ["rating", "bpr"])
def test_loss_falls(mode):
    losses = _curve(mode)
    # BPR starts at log 2 and the pairwise signal of 256 triples is weak: a smaller but clear drop
    assert np.mean(losses[-4:]) < (0.8 if mode == "rating" else 0.97) * np.mean(losses[:4]), losses


@pytest.mark.parametrize("mode", ["rating", "bpr"])
def test_reference_backend_gives_the_same_loss_curve(mode):
    np.testing.assert_allclose(_curve(mode, backend="reference"), _curve(mode), rtol=1e-5, atol=1e-6)


def test_forward_shapes_and_bias_only_start():
    model = PMF(5, 7, 4, global_mean=3.5, init_std=0.0, seed=0)
    out = model(torch.tensor([0, 4, 2]), torch.tensor([6, 0, 3]))
    assert out.shape == (3,) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full((3,), 3.5))  # zero factors and biases: the global mean


def test_state_dict_round_trip():
    r = _ratings()
    a = PMF(r.num_users, r.num_items, 8, seed=0)
    users, items, ratings = (torch.from_numpy(x) for x in (r.users[:64], r.items[:64], r.ratings[:64]))
    a.rating_loss(users, items, ratings).backward()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = PMF(r.num_users, r.num_items, 8, seed=1)
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    torch.testing.assert_close(b(users, items), a(users, items), rtol=0, atol=0)
    for key, value in a.state_dict().items():  # Adagrad accumulators too, so training resumes exactly
        torch.testing.assert_close(b.state_dict()[key], value, rtol=0, atol=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        PMF(3, 3, mode="pointwise")
    with pytest.raises(ValueError, match="reg"):
        PMF(3, 3, reg=-1.0)


@pytest.mark.parametrize("config", ["pmf-tiny", "pmf-bpr"])
def test_task_trains_and_evaluates(config):
    cfg = dict(CONFIGS[config], epochs=5, batch_size=64, embedding_dim=8)
    data = synthetic_ratings(**CONFIGS["pmf-tiny"]["data_args"]) if config == "pmf-tiny" else _implicit()
    task = RatingsTask(data, cfg)
    untrained = task.evaluate(task.build_model(cfg), "valid", "cpu")
    trained = task.evaluate(train_pmf(task, cfg), "valid", "cpu")
    if task.mode == "rating":
        assert set(trained) == {"RMSE", "MAE"} and trained["RMSE"] < untrained["RMSE"]
    else:
        assert set(trained) == {"AUC"} and trained["AUC"] > max(0.6, untrained["AUC"] + 0.05), (untrained, trained)
    batch = next(iter(task.train_batches(0, "cpu")))
    assert task.batch_size_of(batch) == 64 and task.make_optimizers(task.build_model(cfg), cfg) == []


def test_cross_validation_beats_the_global_mean():
    r = _ratings()
    result = cross_validate_pmf(r, dict(CONFIGS["pmf-tiny"], epochs=4, embedding_dim=8), folds=3)
    assert len(result["folds"]) == 3
    baseline = float(np.sqrt(np.mean((r.ratings - r.ratings.mean()) ** 2)))
    assert result["RMSE"] < baseline
    with pytest.raises(ValueError, match="mode"):
        cross_validate_pmf(r, CONFIGS["pmf-bpr"])


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="factors"):
        RatingsTask(_ratings(), dict(CONFIGS["pmf-tiny"], factors=3))
