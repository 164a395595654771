"""clip_gs.model.loss: hand-computed values, a loop-by-loop reference, masks, symmetry, DDP offsets."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from clip_gs.errors import ConfigError
from clip_gs.model.loss import MAX_LOGIT_SCALE, CLIPGSLoss, clamp_logit_scale_, logit_scale_value, voting_weights


def log1pexp(x: float) -> float:
    return math.log(1 + math.exp(x))


# ---------------------------------------------------------------------------- a loop-by-loop reference
def reference(g, t, t_mask, im, im_mask, sim, scale, norm="raw", temperature=0.1, w_text=1.0, w_img=1.0):
    """The module docstring's equations written with Python loops over objects and views."""
    g, t, im = F.normalize(g, dim=-1), F.normalize(t, dim=-1), F.normalize(im, dim=-1)
    b, k = im.shape[:2]

    def contra(q, keys, target, valid):
        logits = [scale * float(q @ keys[j]) for j in range(len(keys)) if valid[j]]
        pos = scale * float(q @ keys[target])
        return pos - math.log(sum(math.exp(x) for x in logits))

    text_ids = [i for i in range(b) if t_mask[i]]
    text_sum = sum(contra(g[i], t, i, t_mask) + contra(t[i], g, i, t_mask) for i in text_ids)
    l_text = -text_sum / (2 * len(text_ids)) if text_ids else 0.0

    def weights(i):
        real = [kk for kk in range(k) if im_mask[i, kk]]
        s = {kk: float(sim[i, kk]) for kk in real}
        if norm == "raw":
            return {kk: max(s[kk], 0.0) / len(real) for kk in real}
        if norm == "softmax":
            z = sum(math.exp(v / temperature) for v in s.values())
            return {kk: math.exp(s[kk] / temperature) / z for kk in real}
        pos = {kk: max(v, 0.0) for kk, v in s.items()}
        z = sum(pos.values())
        return {kk: (pos[kk] / z if z > 0 else 0.0) for kk in real}

    img_ids = [i for i in range(b) if im_mask[i].any() and t_mask[i]]  # the voters
    img_sum = 0.0
    for i in img_ids:
        for kk, a in weights(i).items():
            views_k = im[:, kk]
            img_sum += a * (contra(g[i], views_k, i, im_mask[:, kk]) + contra(im[i, kk], g, i, im_mask[:, kk]))
    l_img = -img_sum / (2 * len(img_ids)) if img_ids else 0.0
    return w_text * l_text + w_img * l_img, l_text, l_img


def random_batch(b=6, k=3, e=8, seed=0, masks=True):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(b, e, generator=gen)
    t = torch.randn(b, e, generator=gen)
    im = torch.randn(b, k, e, generator=gen)
    t_mask = torch.ones(b, dtype=torch.bool)
    im_mask = torch.ones(b, k, dtype=torch.bool)
    if masks:
        t_mask[1] = False
        im_mask[2, 1:] = False
        im_mask[4, :] = False
    sim = torch.rand(b, k, generator=gen) * 0.8 - 0.2  # some negative cosines
    sim = torch.where(im_mask & t_mask[:, None], sim, torch.zeros(()))
    return g, t, t_mask, im, im_mask, sim


def run(loss_fn, batch, logit_scale, **kw):
    g, t, t_mask, im, im_mask, sim = batch
    return loss_fn(g, t, t_mask, im, im_mask, sim, logit_scale, **kw)


# ---------------------------------------------------------------------------- hand-computed values
def test_text_loss_by_hand():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    im = torch.zeros(2, 1, 2)
    out = CLIPGSLoss(image_weight=0.0)(
        g, t, torch.ones(2, dtype=torch.bool), im, torch.zeros(2, 1, dtype=torch.bool), torch.zeros(2, 1),
        torch.tensor(math.log(10.0)),
    )  # fmt: skip
    # logits (scale 10): G0.T = [10, 6], G1.T = [0, 8], T0.G = [10, 0], T1.G = [6, 8]
    expected = (log1pexp(-4) + log1pexp(-8) + log1pexp(-10) + log1pexp(-2)) / 4
    assert out.text.item() == pytest.approx(expected, rel=1e-6)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.image.item() == 0.0 and out.n_image.item() == 0 and out.n_text.item() == 2


@pytest.mark.parametrize("norm", ["raw", "softmax", "sum_to_one"])
def test_image_voting_loss_by_hand(norm):
    # two objects, two views each; scale 10; view embeddings chosen so every logit is explicit
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    im = torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [1.0, 0.0]]])  # [B=2, K=2, E=2]
    sim = torch.tensor([[0.5, 0.25], [0.2, -0.1]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    out = CLIPGSLoss(text_weight=0.0, similarity_norm=norm, similarity_temperature=0.5)(
        g, torch.zeros(2, 2), torch.ones(2, dtype=torch.bool), im, mask, sim, torch.tensor(math.log(10.0))
    )  # captioned (the voters) but text weight 0: only the image term
    # view 0: I_.0 = [[1,0],[0,1]] = G -> every Contra is -log(1 + e^-10)
    c0 = -log1pexp(-10)
    # view 1: I_.1 = [[.6,.8],[1,0]]; G0.I = [6, 10] (target 0), G1.I = [8, 0] (target 1)
    #         I01.G = [6, 8] (target 0), I11.G = [10, 0] (target 1)
    g0, g1 = -log1pexp(4), -log1pexp(8)
    i0, i1 = -log1pexp(2), -log1pexp(10)
    if norm == "raw":
        a = [[0.5 / 2, 0.25 / 2], [0.2 / 2, 0.0]]  # a negative cosine votes 0
    elif norm == "softmax":
        e0 = [math.exp(0.5 / 0.5), math.exp(0.25 / 0.5)]
        e1 = [math.exp(0.2 / 0.5), math.exp(-0.1 / 0.5)]
        a = [[x / sum(e0) for x in e0], [x / sum(e1) for x in e1]]
    else:
        a = [[0.5 / 0.75, 0.25 / 0.75], [1.0, 0.0]]  # negative cosine clamped to 0
    total = a[0][0] * 2 * c0 + a[1][0] * 2 * c0 + a[0][1] * (g0 + i0) + a[1][1] * (g1 + i1)
    expected = -total / (2 * 2)
    assert out.image.item() == pytest.approx(expected, rel=1e-6)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


def test_voting_weights_values_and_masks():
    sim = torch.tensor([[0.4, 0.2, 0.9], [0.3, -0.2, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    raw = voting_weights(sim, mask, mode="raw")
    assert torch.allclose(raw, torch.tensor([[0.2, 0.1, 0.0], [0.1, 0.0, 0.0]]))  # a negative S votes 0, not < 0
    soft = voting_weights(sim, mask, mode="softmax", temperature=0.1)
    assert soft[0, 2] == 0 and torch.allclose(soft.sum(1), torch.ones(2))
    assert soft[0, 0].item() == pytest.approx(math.exp(4) / (math.exp(4) + math.exp(2)), rel=1e-6)
    one = voting_weights(sim, mask, mode="sum_to_one")
    assert torch.allclose(one, torch.tensor([[2 / 3, 1 / 3, 0.0], [1.0, 0.0, 0.0]]))
    none = torch.zeros(1, 3, dtype=torch.bool)
    for mode in ("raw", "softmax", "sum_to_one"):
        assert torch.equal(voting_weights(torch.ones(1, 3), none, mode=mode), torch.zeros(1, 3))
    with pytest.raises(ConfigError, match="similarity_norm"):
        voting_weights(sim, mask, mode="mean")


@pytest.mark.parametrize("mode", ["raw", "softmax", "sum_to_one"])
def test_objects_without_a_caption_never_vote(mode):
    """One rule in every mode: no caption, weight 0 (softmax used to give them uniform weights)."""
    sim = torch.tensor([[0.4, 0.2], [0.3, 0.5]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    weights = voting_weights(sim, mask, torch.tensor([True, False]), mode=mode)
    assert torch.equal(weights[1], torch.zeros(2)) and weights[0].sum() > 0
    assert torch.equal(weights[0], voting_weights(sim[:1], mask[:1], mode=mode)[0])


@pytest.mark.parametrize("norm", ["raw", "softmax", "sum_to_one"])
def test_uncaptioned_objects_do_not_shrink_the_image_term(norm):
    """N_img counts the voters only: adding an object without a caption whose views are far from
    everything leaves L_img as it was (it used to divide by one more object)."""
    g, t, t_mask, im, im_mask, sim = random_batch(b=4, masks=False, seed=11)
    loss = CLIPGSLoss(similarity_norm=norm)
    scale = torch.tensor(1.0)
    base = loss(g, t, t_mask, im, im_mask, sim, scale)
    extra_g = torch.cat([g, torch.randn(1, g.shape[1])])
    far = torch.zeros(1, *im.shape[1:])  # a zero view: cosine 0 with everything (normalize keeps it 0)
    out = loss(extra_g, torch.cat([t, torch.zeros(1, t.shape[1])]), torch.cat([t_mask, torch.tensor([False])]),
               torch.cat([im, far]), torch.cat([im_mask, torch.zeros(1, im.shape[1], dtype=torch.bool)]),
               torch.cat([sim, torch.zeros(1, sim.shape[1])]), scale)  # fmt: skip
    assert out.n_image.item() == base.n_image.item() == 4
    assert out.image.item() == pytest.approx(base.image.item(), rel=1e-5)
    with_views = loss(extra_g, torch.cat([t, torch.zeros(1, t.shape[1])]), torch.cat([t_mask, torch.tensor([False])]),
                      torch.cat([im, torch.randn(1, *im.shape[1:])]), torch.ones(5, im.shape[1], dtype=torch.bool),
                      torch.cat([sim, torch.ones(1, sim.shape[1])]), scale)  # fmt: skip
    assert with_views.n_image.item() == 4  # real views but no caption: still not a voter


# ---------------------------------------------------------------------------- the reference
@pytest.mark.parametrize("norm", ["raw", "softmax", "sum_to_one"])
@pytest.mark.parametrize("masks", [False, True])
def test_matches_the_loop_reference(norm, masks):
    batch = random_batch(masks=masks, seed=3)
    logit_scale = torch.tensor(math.log(1 / 0.07))
    out = run(CLIPGSLoss(text_weight=0.7, image_weight=1.3, similarity_norm=norm, similarity_temperature=0.2), batch,
              logit_scale)  # fmt: skip
    total, l_text, l_img = reference(*batch, scale=1 / 0.07, norm=norm, temperature=0.2, w_text=0.7, w_img=1.3)
    assert out.text.item() == pytest.approx(l_text, rel=1e-5)
    assert out.image.item() == pytest.approx(l_img, rel=1e-5)
    assert out.loss.item() == pytest.approx(total, rel=1e-5)
    assert out.n_text.item() == (5 if masks else 6) and out.n_image.item() == (
        4 if masks else 6
    )  # voters: caption + view


def test_masked_objects_are_left_out_not_filled():
    """A masked object's (garbage) embeddings change nothing; removing the object gives the same loss."""
    g, t, t_mask, im, im_mask, sim = random_batch(seed=5)
    loss = CLIPGSLoss()
    scale = torch.tensor(2.0)
    base = loss(g, t, t_mask, im, im_mask, sim, scale)
    t2, im2 = t.clone(), im.clone()
    t2[1] = 100.0  # no caption: its text row is garbage
    im2[2, 1:] = -7.0  # missing views
    im2[4] = 3.0
    again = loss(g, t2, t_mask, im2, im_mask, sim, scale)
    assert torch.allclose(base.loss, again.loss, atol=1e-6)
    # object 4 has no views: the text term is the same as for a batch without it... only in the image term
    keep = [0, 1, 2, 3, 5]
    sub = loss(g[keep], t[keep], t_mask[keep], im[keep], im_mask[keep], sim[keep], scale)
    assert sub.image.item() == pytest.approx(base.image.item(), rel=1e-6)


def test_symmetry_and_no_gradient_into_teacher_or_similarity():
    g, t, t_mask, im, im_mask, sim = random_batch(masks=False, seed=7)
    loss = CLIPGSLoss(image_weight=0.0)
    scale = torch.tensor(1.5)
    a = loss(g, t, t_mask, im, im_mask, sim, scale).text
    b = loss(t, g, t_mask, im, im_mask, sim, scale).text  # swapping the two sides: the same sum
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    g = g.clone().requires_grad_()
    t, sim = t.clone().requires_grad_(), sim.clone().requires_grad_()
    logit_scale = torch.tensor(1.5, requires_grad=True)
    CLIPGSLoss()(g, t, t_mask, im, im_mask, sim, logit_scale).loss.backward()
    assert g.grad.abs().sum() > 0 and logit_scale.grad.abs() > 0
    assert t.grad is None and sim.grad is None


def test_the_scale_has_a_gradient_above_the_cap_and_the_clamp_is_on_the_parameter():
    """The bug this guards against: ``exp(p).clamp(max=100)`` has zero gradient above the cap, so a
    scale that crossed ln 100 could never come down. Now the loss sees ``exp(p)`` (gradient
    everywhere) and the parameter is clamped in place after each optimiser step."""
    assert logit_scale_value(torch.tensor(math.log(1 / 0.07))).item() == pytest.approx(1 / 0.07, rel=1e-6)
    big = torch.tensor(math.log(MAX_LOGIT_SCALE) + 0.5, requires_grad=True)
    run(CLIPGSLoss(), random_batch(masks=False), big).loss.backward()
    assert big.grad.item() > 0  # random features: a lower scale lowers the loss, and the gradient says so
    p = torch.nn.Parameter(torch.tensor(7.0))
    assert clamp_logit_scale_(p) is p and p.item() == pytest.approx(math.log(100))
    p.data.fill_(-1.0)
    assert clamp_logit_scale_(p, 50.0).item() == 0.0  # the floor: s >= 1
    with pytest.raises(ConfigError, match="max_logit_scale"):
        clamp_logit_scale_(p, 0.5)


def test_no_host_synchronisation_in_the_loss(monkeypatch):
    """The loss never reads a tensor back (``bool``/``item`` on a tensor): a training step stays asynchronous."""

    def refuse(self, *args):
        raise AssertionError("the loss read a tensor back to the host")

    batch = random_batch(seed=2)
    monkeypatch.setattr(torch.Tensor, "__bool__", refuse)
    monkeypatch.setattr(torch.Tensor, "item", refuse)
    out = run(CLIPGSLoss(similarity_norm="softmax"), batch, torch.tensor(2.0))
    monkeypatch.undo()
    assert math.isfinite(out.loss.item())


def test_empty_terms_are_zero_and_in_the_graph():
    g = torch.randn(3, 4, requires_grad=True)
    out = CLIPGSLoss()(
        g, torch.zeros(3, 4), torch.zeros(3, dtype=torch.bool), torch.zeros(3, 2, 4),
        torch.zeros(3, 2, dtype=torch.bool), torch.zeros(3, 2), torch.tensor(1.0),
    )  # fmt: skip
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()
    assert torch.equal(g.grad, torch.zeros(3, 4))


def test_invalid_settings():
    with pytest.raises(ConfigError, match="similarity_norm"):
        CLIPGSLoss(similarity_norm="nope")
    with pytest.raises(ConfigError, match="temperature"):
        CLIPGSLoss(similarity_temperature=0)


# ---------------------------------------------------------------------------- DDP: a fake world
class FakeWorld:
    """Simulates R ranks without a process group, by running the ranks twice.

    Pass 1 records what each rank hands to ``gather`` (call by call); pass 2 answers every call
    with the recorded tensors of all ranks, this rank's own input in its slot. The features of
    the other ranks keep their graph with ``differentiable=True`` (``local_loss``'s gather) and
    are detached otherwise (the plain all-gather)."""

    def __init__(self, world: int, differentiable: bool):
        self.world, self.differentiable = world, differentiable
        self.recorded: dict[int, list] = {}

    def recorder(self, rank):
        self.recorded[rank] = []

        def gather(x):
            self.recorded[rank].append(x)
            return [x] * self.world

        return gather

    def gather_for(self, rank):
        calls = iter(range(10**6))

        def gather(x):
            i = next(calls)
            parts = [self.recorded[s][i] for s in range(self.world)]
            parts = [p if (s == rank or self.differentiable) else p.detach() for s, p in enumerate(parts)]
            parts[rank] = x
            return parts

        return gather


def split_ranks(batch, world):
    b = batch[0].shape[0] // world
    return [[x[r * b : (r + 1) * b] for x in batch] for r in range(world)]


@pytest.mark.parametrize("local_loss", [False, True])
@pytest.mark.parametrize("norm", ["raw", "softmax"])
def test_fake_world_equals_single_process(local_loss, norm):
    """Two simulated ranks: loss values, label offsets and gradients equal the single-process run."""
    world = 2
    batch = list(random_batch(b=6, seed=11))
    logit_scale = torch.tensor(2.3, requires_grad=True)
    loss = CLIPGSLoss(similarity_norm=norm, local_loss=local_loss)
    g_single = batch[0].clone().requires_grad_()
    single = loss(g_single, *batch[1:], logit_scale)
    single.loss.backward()
    scale_grad, logit_scale.grad = logit_scale.grad.clone(), None

    g_all = batch[0].clone().requires_grad_()  # the features of all ranks, stacked in rank order
    b = g_all.shape[0] // world
    fake = FakeWorld(world, differentiable=local_loss)
    shards = split_ranks([g_all, *batch[1:]], world)
    for rank in range(world):
        loss(*shards[rank], logit_scale, rank=rank, world_size=world, gather=fake.recorder(rank))
    values = [
        loss(*shards[rank], logit_scale, rank=rank, world_size=world, gather=fake.gather_for(rank))
        for rank in range(world)
    ]
    if local_loss:  # each rank: its own rows (label offset rank * B); the shares sum to the global loss
        assert sum(v.loss.item() for v in values) == pytest.approx(single.loss.item(), rel=1e-6)
        assert values[0].loss.item() != pytest.approx(values[1].loss.item(), rel=1e-3)
    else:  # every rank: the global loss
        for v in values:
            assert v.loss.item() == pytest.approx(single.loss.item(), rel=1e-6)
    for v in values:
        assert v.n_text.item() == single.n_text.item() and v.n_image.item() == single.n_image.item()
    # What DDP does: each rank backpropagates its own loss; the parameters' gradient is the sum
    # (x world_size, then DDP's average) of what reaches each rank's local features.
    grads = []
    for rank, v in enumerate(values):
        if local_loss:  # the differentiable gather sums every rank's gradient onto the local features
            grads.append(torch.autograd.grad(v.loss, g_all, retain_graph=True)[0])
        else:
            grads.append(torch.autograd.grad(v.loss, g_all, retain_graph=True)[0] * _row_mask(rank, b, g_all))
    assert torch.allclose(sum(grads), g_single.grad, atol=1e-6)
    scale_grads = [torch.autograd.grad(v.loss, logit_scale, retain_graph=True)[0] for v in values]
    assert sum(scale_grads).item() == pytest.approx(scale_grad.item(), rel=1e-5)  # the sum-over-ranks contract


def _row_mask(rank, b, g_all):
    m = torch.zeros(g_all.shape[0], 1)
    m[rank * b : (rank + 1) * b] = 1
    return m


def test_fake_world_label_offset_matters():
    """Rank 1's rows are scored against columns B..2B-1: evaluated with offset 0 the value differs."""
    batch = list(random_batch(b=4, masks=False, seed=2))
    loss = CLIPGSLoss(local_loss=True)
    fake = FakeWorld(2, differentiable=True)
    shards = split_ranks(batch, 2)
    for rank in range(2):
        loss(*shards[rank], torch.tensor(2.0), rank=rank, world_size=2, gather=fake.recorder(rank))
    r1 = loss(*shards[1], torch.tensor(2.0), rank=1, world_size=2, gather=fake.gather_for(1)).loss
    r0 = loss(*shards[0], torch.tensor(2.0), rank=0, world_size=2, gather=fake.gather_for(0)).loss
    whole = loss(*batch, torch.tensor(2.0)).loss
    assert (r0 + r1).item() == pytest.approx(whole.item(), rel=1e-6)
    # rank 1 with the rows of rank 0's slot (what a missing offset would compute) is another value
    wrong = loss(*shards[1], torch.tensor(2.0), rank=0, world_size=2, gather=lambda x: [x, x])
    assert wrong.loss.item() != pytest.approx(r1.item(), rel=1e-3)


def test_unequal_batches_across_ranks_are_refused():
    batch = random_batch(b=4, masks=False)
    with pytest.raises(ConfigError, match="same batch size"):
        run(CLIPGSLoss(), batch, torch.tensor(1.0), rank=0, world_size=2, gather=lambda x: [x, x[:1]])


# ---------------------------------------------------------------------------- DDP: a real gloo group
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_worker(rank, world, port, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        batch = list(random_batch(b=6, seed=13))
        b = 6 // world
        shard = [x[rank * b : (rank + 1) * b] for x in batch]
        for local_loss in (False, True):
            g = shard[0].clone().requires_grad_()
            logit_scale = torch.tensor(2.0, requires_grad=True)
            result = CLIPGSLoss(local_loss=local_loss)(g, *shard[1:], logit_scale, rank=rank, world_size=world)
            result.loss.backward()
            out[(rank, local_loss)] = (result.loss.item(), g.grad.clone(), logit_scale.grad.item())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_real_gloo_two_processes():
    """torch.distributed gathers (plain and differentiable): values, feature gradients and the
    logit scale's sum-over-ranks gradient equal the single-process ones."""
    import torch.multiprocessing as mp

    world = 2
    out = mp.Manager().dict()
    mp.spawn(_gloo_worker, args=(world, _free_port(), out), nprocs=world, join=True)
    batch = list(random_batch(b=6, seed=13))
    g = batch[0].clone().requires_grad_()
    logit_scale = torch.tensor(2.0, requires_grad=True)
    single = CLIPGSLoss()(g, *batch[1:], logit_scale)
    single.loss.backward()
    for local_loss in (False, True):
        values = [out[(r, local_loss)][0] for r in range(world)]
        if local_loss:
            assert sum(values) == pytest.approx(single.loss.item(), rel=1e-6)
        else:
            assert values == pytest.approx([single.loss.item()] * world, rel=1e-6)
        grad = torch.cat([out[(r, local_loss)][1] for r in range(world)])
        assert torch.allclose(grad, g.grad, atol=1e-6)
        assert sum(out[(r, local_loss)][2] for r in range(world)) == pytest.approx(logit_scale.grad.item(), rel=1e-5)
