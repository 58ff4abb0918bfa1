"""Losses, sampling, augmentation and the training loop (one step lowers the loss; resume)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from reidtrain import models
from reidtrain.augment import Augment
from reidtrain.losses import ReidLoss, batch_hard_triplet
from reidtrain.sampler import PKSampler
from reidtrain.train import Recipe, lr_at, train


def test_batch_hard_triplet_picks_the_hardest_pairs():
    f = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    # anchor 0: farthest positive 3, nearest negative 1 → 3 - 1 + 0.3; anchor 1: 3 - 2 + 0.3;
    # anchor 2: positive 9, negative 1 → 8.3; anchor 3: positive 9, negative 7 → 2.3
    want = (2.3 + 1.3 + 8.3 + 2.3) / 4
    assert batch_hard_triplet(f, y, 0.3).item() == pytest.approx(want, abs=1e-4)


def test_pk_sampler_batches_hold_p_identities_times_k():
    labels = np.repeat(np.arange(12), [2, 5, 9, 4, 4, 4, 7, 3, 8, 4, 6, 1])
    sampler = PKSampler(labels, p=4, k=4, seed=3)
    batches = sampler.epoch()
    # 14 chunks of K (ids with 8-9 images give two) → three batches of four distinct ids
    assert len(batches) == 3
    for b in batches:
        assert len(b) == 16
        ids, counts = np.unique(labels[b], return_counts=True)
        assert len(ids) == 4 and (counts == 4).all()


def test_augment_keeps_shape_and_changes_pixels():
    pixels = torch.randint(0, 256, (8, 64, 32, 3), dtype=torch.uint8)
    out = Augment(64, generator=torch.Generator().manual_seed(0))(pixels)
    assert out.shape == (8, 3, 64, 32)
    plain = Augment(64, flip=0, pad=0, erase=0)(pixels)
    assert not torch.allclose(out, plain)


def test_lr_warms_up_then_decays():
    r = Recipe(lr=1e-3, warmup=2, epochs=10)
    assert lr_at(r, 0) == pytest.approx(1e-4)
    assert lr_at(r, 2) == pytest.approx(1e-3)
    assert lr_at(r, 10) == pytest.approx(1e-5)
    assert lr_at(r, 1) < lr_at(r, 2) > lr_at(r, 6) > lr_at(r, 9)


@pytest.mark.parametrize("arch,bnneck", [("osnet", True), ("osnet", False), ("sclnet", True)])
def test_one_training_step_lowers_the_loss(arch, bnneck):
    torch.manual_seed(0)
    net = models.build(arch, 0.25, num_classes=4, bnneck=bnneck)
    crit = ReidLoss(4, [c.in_features for c in net.classifiers])
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.randn(8, 3, 64, 32)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    net.train()
    before, _ = crit(net(x), y)
    opt.zero_grad()
    before.backward()
    opt.step()
    after, _ = crit(net(x), y)
    assert after.item() < before.item()


def test_training_resumes_where_it_stopped(tiny_train, tmp_path):
    recipe = Recipe(arch="osnet", width=0.25, height_px=64, width_px=32, epochs=2, p=4, k=2,
                    warmup=1)
    quiet = lambda *_: None  # noqa: E731
    straight = train(recipe, tiny_train, tmp_path / "a", threads=2, log=quiet)
    # the same run interrupted after epoch 1, then resumed: bit-identical weights
    part = train(recipe, tiny_train, tmp_path / "b", threads=2, log=quiet, stop_after=1)
    assert len(part["history"]) == 1
    resumed = train(recipe, tiny_train, tmp_path / "b", threads=2, log=quiet, resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    for (n1, p1), (n2, p2) in zip(straight["model"].state_dict().items(),
                                  resumed["model"].state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert (tmp_path / "b" / "last.pt").is_file()
    assert len((tmp_path / "b" / "log.jsonl").read_text().splitlines()) == 2


def test_resume_refuses_another_recipe(tiny_train, tmp_path):
    recipe = Recipe(width=0.25, height_px=64, width_px=32, epochs=1, p=4, k=2, warmup=1)
    train(recipe, tiny_train, tmp_path / "a", threads=2, log=lambda *_: None)
    with pytest.raises(SystemExit, match="recipe differs"):
        train(replace(recipe, lr=1.0), tiny_train, tmp_path / "a", threads=2, resume=True,
              log=lambda *_: None)
