"""Tests of the Gated PixelCNN prior and of its samplers: causality, no blind spot, incremental == naive."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from oasis_gen.inferers.pixelcnn_incremental import IncrementalState, incremental_logits
from oasis_gen.inferers.pixelcnn_inferer import VQVAEPixelCNNInferer, decode_codes, encode_images
from oasis_gen.inferers.pixelcnn_sampling import complete_codes, sample_codes, sample_codes_naive
from oasis_gen.inferers.pixelcnn_truncation import truncate_logits
from oasis_gen.networks.pixelcnn import GatedPixelCNN, load_pixelcnn, pixelcnn_from_spec, pixelcnn_spec
from oasis_gen.networks.vqvae import vqvae_from_spec, vqvae_spec

K = 5


def _model(seed: int = 0, **kwargs) -> GatedPixelCNN:
    torch.manual_seed(seed)
    kwargs = {"num_embeddings": K, "channels": 8, "num_layers": 4, **kwargs}
    return GatedPixelCNN(**kwargs).eval()


def _codes(shape: tuple[int, ...], num_embeddings: int = K, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, num_embeddings, shape, generator=torch.Generator().manual_seed(seed))


def _dependence(
    model: GatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """``dep[i, j, a, b]``: whether the logits at (i, j) of grid 0 get a gradient from the code at (a, b)."""
    captured: list[torch.Tensor] = []
    handle = model.embedding.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        logits = model(codes, labels)
    finally:
        handle.remove()
    embedded = captured[0]
    projection = torch.randn(model.num_embeddings, generator=torch.Generator().manual_seed(2))
    height, width = codes.shape[1:]
    dep = torch.zeros(height, width, height, width, dtype=torch.bool)
    for i in range(height):
        for j in range(width):
            (grad,) = torch.autograd.grad(
                (logits[0, :, i, j] * projection).sum(), embedded, retain_graph=True
            )
            dep[i, j] = grad[0].abs().sum(dim=-1) > 0
    return dep


def _raster_prefix(height: int, width: int) -> torch.Tensor:
    """``prefix[i, j, a, b]``: whether (a, b) comes strictly before (i, j) in raster order."""
    index = torch.arange(height * width).view(height, width)
    return index[None, None, :, :] < index[:, :, None, None]


# ----------------------------------------------------------------------------------------------- the network


def test_forward_shape_and_dtype():
    model = _model()
    logits = model(_codes((3, 6, 7)))
    assert logits.shape == (3, K, 6, 7)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert model(_codes((2, 1, 1))).shape == (2, K, 1, 1)


@pytest.mark.parametrize(
    "kwargs, grid",
    [
        ({"num_layers": 6, "kernel_size": 3}, (6, 6)),
        ({"num_layers": 3, "kernel_size": 5, "num_classes": 3}, (7, 5)),
    ],
)
def test_causal_without_blind_spot(kwargs, grid):
    """Logits at (i, j) depend on exactly the positions before (i, j) in raster order, given enough depth."""
    model = _model(**kwargs)
    labels = torch.tensor([1]) if "num_classes" in kwargs else None
    dep = _dependence(model, _codes((1, *grid)), labels)
    prefix = _raster_prefix(*grid)
    assert not (dep & ~prefix).any(), "logits see the current position or a later one"
    assert (dep == prefix).all(), "some earlier position is not seen"
    height, width = grid
    for i in range(1, height):  # the old blind spot: above and to the right, up to the far corner
        for j in range(width):
            assert dep[i, j, i - 1, j:].all()
    assert dep[height - 1, 0, 0, width - 1]


@pytest.mark.parametrize("num_layers, kernel_size", [(1, 3), (2, 3), (1, 5)])
def test_receptive_field_is_a_full_rectangle(num_layers, kernel_size):
    """A shallow net sees exactly the rectangle above and the segment to the left, as documented."""
    model = _model(num_layers=num_layers, kernel_size=kernel_size)
    height, width = 7, 9
    dep = _dependence(model, _codes((1, height, width)))
    rows_above, cols = model.receptive_field
    assert (rows_above, cols) == (num_layers * (kernel_size // 2) + 1, num_layers * (kernel_size // 2))
    expected = torch.zeros_like(dep)
    for i in range(height):
        for j in range(width):
            expected[i, j, max(i - rows_above, 0) : i, max(j - cols, 0) : j + cols + 1] = True
            expected[i, j, i, max(j - cols, 0) : j] = True
    assert (dep == expected).all()


def test_changing_current_and_later_codes_leaves_logits_unchanged():
    model = _model(num_layers=5)
    codes = _codes((1, 5, 6))
    reference = model(codes)
    for i, j in [(0, 0), (2, 3), (4, 5), (3, 0)]:
        changed = codes.clone().view(-1)
        start = i * 6 + j
        changed[start:] = (changed[start:] + 1 + _codes((changed.numel() - start,), K - 1, seed=start)) % K
        logits = model(changed.view(1, 5, 6))
        torch.testing.assert_close(logits[:, :, i, j], reference[:, :, i, j], rtol=0, atol=1e-6)
        if start > 0:  # and changing the previous code does change them
            changed = codes.clone().view(-1)
            changed[start - 1] = (changed[start - 1] + 1) % K
            assert not torch.allclose(model(changed.view(1, 5, 6))[:, :, i, j], reference[:, :, i, j])


def test_labels_change_the_logits():
    model = _model(num_classes=4)
    codes = _codes((2, 4, 4))
    first, second = model(codes, torch.tensor([0, 0])), model(codes, torch.tensor([3, 3]))
    assert not torch.allclose(first, second)
    torch.testing.assert_close(model(codes, 2), model(codes, torch.tensor([2, 2])))


def test_every_parameter_gets_a_gradient():
    """No dead parameters (they would break DistributedDataParallel without find_unused_parameters)."""
    model = _model(num_classes=3, dropout=0.1).train()
    codes = _codes((2, 5, 5))
    loss = torch.nn.functional.cross_entropy(model(codes, torch.tensor([0, 2])), codes)
    loss.backward()
    missing = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    assert not missing


def test_runs_under_autocast():
    model = _model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(_codes((2, 4, 4)))
    assert logits.shape == (2, K, 4, 4)
    assert torch.isfinite(logits.float()).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kernel_size": 4}, "kernel_size must be an odd integer >= 3"),
        ({"kernel_size": 1}, "kernel_size must be an odd integer >= 3"),
        ({"num_layers": 0}, "num_layers must be an integer >= 1"),
        ({"channels": 0}, "channels must be an integer >= 1"),
        ({"num_embeddings": 0}, "num_embeddings must be an integer >= 1"),
        ({"num_classes": 0}, "num_classes must be an integer >= 1"),
        ({"dropout": 1.0}, "dropout must lie in"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _model(**kwargs)


def test_bad_inputs_give_clear_errors():
    model = _model()
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 5\).*got values in \[0, 5\]"):
        model(torch.tensor([[[0, 5]]]))
    with pytest.raises(ValueError, match=r"got values in \[-1, 1\]"):
        model(torch.tensor([[[-1, 1]]]))
    with pytest.raises(ValueError, match=r"shape \[batch, height, width\]"):
        model(_codes((4, 4)))
    with pytest.raises(TypeError, match="integer tensor"):
        model(torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="unconditional"):
        model(_codes((1, 3, 3)), torch.tensor([0]))

    conditional = _model(num_classes=3)
    with pytest.raises(ValueError, match="labels of shape \\[2\\] are required"):
        conditional(_codes((2, 3, 3)))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        conditional(_codes((2, 3, 3)), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"labels must have shape \[2\]"):
        conditional(_codes((2, 3, 3)), torch.tensor([0]))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        conditional(_codes((2, 3, 3)), torch.tensor([0.0, 1.0]))


# -------------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"num_classes": 3, "kernel_size": 5, "num_layers": 3},
        {"num_embeddings": 16, "channels": 12, "num_layers": 6, "dropout": 0.2},
    ],
)
def test_incremental_logits_equal_forward(kwargs):
    model = _model(**kwargs)
    codes = _codes((3, 6, 7), model.num_embeddings)
    labels = torch.tensor([0, 2, 1]) if "num_classes" in kwargs else None
    with torch.no_grad():
        expected = model(codes, labels)
    actual = incremental_logits(model, codes, labels)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_incremental_logits_equal_forward_default_model():
    model = GatedPixelCNN(num_embeddings=32).eval()
    codes = _codes((2, 5, 6), 32)
    with torch.no_grad():
        expected = model(codes)
    torch.testing.assert_close(incremental_logits(model, codes), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("num_classes", [None, 3])
def test_sample_codes_matches_naive(num_classes):
    model = _model(num_classes=num_classes)
    labels = torch.tensor([0, 1, 2, 1]) if num_classes else None
    fast = sample_codes(model, 4, (5, 6), labels=labels, generator=torch.Generator().manual_seed(3))
    naive = sample_codes_naive(model, 4, (5, 6), labels=labels, generator=torch.Generator().manual_seed(3))
    assert fast.shape == (4, 5, 6) and fast.dtype == torch.long
    assert torch.equal(fast, naive)
    assert fast.min() >= 0 and fast.max() < K
    again = sample_codes(model, 4, (5, 6), labels=labels, generator=torch.Generator().manual_seed(3))
    assert torch.equal(fast, again)
    other = sample_codes(model, 4, (5, 6), labels=labels, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(fast, other)


def test_low_temperature_is_greedy():
    model = _model()
    first = sample_codes(model, 2, (4, 4), temperature=1e-6, generator=torch.Generator().manual_seed(0))
    second = sample_codes(model, 2, (4, 4), temperature=1e-6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, second)
    assert torch.equal(first, model(first).argmax(dim=1))


@pytest.mark.parametrize("per_sample", [False, True])
def test_completion_keeps_the_given_codes_outside_the_region(per_sample):
    model = _model(num_layers=3)
    initial = _codes((3, 6, 6))
    region = torch.zeros(6, 6, dtype=torch.bool)
    region[2:5, 1:4] = True
    if per_sample:
        region = region.expand(3, 6, 6).clone()
        region[1] = False  # the second grid is kept whole
    completed = complete_codes(model, initial, region, generator=torch.Generator().manual_seed(0))
    region = region.expand(3, 6, 6)
    assert torch.equal(completed[~region], initial[~region])
    assert not torch.equal(completed[region], initial[region])
    naive = sample_codes_naive(
        model, 3, (6, 6), generator=torch.Generator().manual_seed(0), initial=initial, region=region
    )
    assert torch.equal(completed, naive)
    assert torch.equal(initial, _codes((3, 6, 6)))  # the input is not modified


def test_empty_region_returns_the_initial_codes():
    model = _model()
    initial = _codes((2, 3, 3))
    completed = complete_codes(model, initial, torch.zeros(3, 3, dtype=torch.bool))
    assert torch.equal(completed, initial)


def test_sampling_uses_eval_mode_and_restores_the_mode():
    model = _model(dropout=0.5).train()
    first = sample_codes(model, 2, (4, 4), generator=torch.Generator().manual_seed(0))
    assert model.training
    second = sample_codes_naive(model, 2, (4, 4), generator=torch.Generator().manual_seed(0))
    assert model.training
    assert torch.equal(first, second)  # dropout off in both, or they could not agree
    model.eval()
    sample_codes(model, 1, (2, 2))
    assert not model.training


def test_progress_bar(capsys):
    sample_codes(_model(), 1, (3, 3), progress=True)
    assert "sampling codes" in capsys.readouterr().err


def test_incremental_state_steps_and_pushes():
    model = _model()
    codes = _codes((2, 3, 4))
    state = IncrementalState(model, 2, (3, 4))
    with torch.no_grad():
        expected = model(codes)
        for i in range(3):
            for j in range(4):
                assert state.next_position == (i, j)
                if (i + j) % 2 == 0:  # steps may be skipped: the caches catch up lazily
                    torch.testing.assert_close(state.step(), expected[:, :, i, j], rtol=0, atol=1e-5)
                state.push(codes[:, i, j])
        assert state.done and torch.equal(state.codes, codes)
        with pytest.raises(RuntimeError, match="complete"):
            state.step()
    with pytest.raises(ValueError, match="one code per sample"):
        IncrementalState(model, 2, (3, 4)).push(torch.tensor([1]))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 5\)"):
        IncrementalState(model, 2, (3, 4)).push(torch.tensor([1, 7]))


def test_bad_sampling_arguments():
    model = _model()
    for temperature in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            sample_codes(model, 1, (2, 2), temperature=temperature)
    with pytest.raises(ValueError, match="num_samples"):
        sample_codes(model, 0, (2, 2))
    with pytest.raises(ValueError, match="grid"):
        sample_codes(model, 1, (2, 0))
    with pytest.raises(ValueError, match="grid"):
        sample_codes_naive(model, 1, 4)
    with pytest.raises(ValueError, match="both initial"):
        sample_codes(model, 1, (2, 2), initial=_codes((1, 2, 2)))
    with pytest.raises(ValueError, match="both initial"):
        sample_codes(model, 1, (2, 2), region=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="initial must have shape"):
        sample_codes(model, 2, (2, 2), initial=_codes((1, 2, 2)), region=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="region must have shape"):
        complete_codes(model, _codes((1, 2, 2)), torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool tensor"):
        complete_codes(model, _codes((1, 2, 2)), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 5\)"):
        complete_codes(model, torch.full((1, 2, 2), 9), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="labels of shape"):
        sample_codes(_model(num_classes=2), 1, (2, 2))


# ------------------------------------------------------------------ the inferer: a VQ-VAE and its prior together


def _tiny_vqvae(num_embeddings: int = K) -> torch.nn.Module:
    torch.manual_seed(3)
    spec = vqvae_spec(image_size=16, num_downsamplings=2, channels=(4, 8), num_embeddings=num_embeddings,
                      embedding_dim=4)
    return vqvae_from_spec(spec).eval()


def test_inferer_sample_draws_the_naive_samplers_codes_and_decodes_them():
    model, vqvae = _model(seed=4, num_classes=3), _tiny_vqvae()
    labels = torch.tensor([0, 2])
    images, codes = VQVAEPixelCNNInferer().sample(vqvae, model, 2, (4, 4), temperature=0.9,
                                                  generator=torch.Generator().manual_seed(5), labels=labels)
    naive = sample_codes_naive(model, 2, (4, 4), 0.9, labels, torch.Generator().manual_seed(5))
    assert torch.equal(codes, naive)
    assert images.shape == (2, 1, 16, 16) and torch.equal(images, decode_codes(vqvae, naive))


def test_inferer_likelihood_is_the_nll_of_one_forward_pass():
    model, vqvae, inferer = _model(seed=6), _tiny_vqvae(), VQVAEPixelCNNInferer()
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    codes = encode_images(vqvae, images)
    with torch.no_grad():
        expected = F.cross_entropy(model(codes), codes, reduction="none") / math.log(2.0)
    bits = inferer.get_likelihood(images, vqvae, model)
    assert bits.shape == (3, 4, 4) and torch.allclose(bits, expected, atol=1e-6)
    assert torch.allclose(inferer.get_likelihood(codes, None, model, quantized=True), expected, atol=1e-6)
    logits, targets = inferer(images, vqvae, model, return_codes=True)
    assert torch.equal(targets, codes) and torch.allclose(logits, model(codes))


# ------------------------------------------------------------------ spatial conditioning (bottom prior of two levels)

CK = 3  # codes of the conditioning (top) grid


def _cond_model(seed: int = 0, **kwargs) -> GatedPixelCNN:
    return _model(seed, cond_num_embeddings=CK, cond_factor=2, **kwargs)


def _cond_dependence(model: GatedPixelCNN, codes: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """``dep[i, j, a, b]``: whether the logits at (i, j) of grid 0 get a gradient from the cond code at (a, b)."""
    captured: list[torch.Tensor] = []
    embedding = model.cond_embedding if model.cond_stack is None else model.cond_stack.embedding
    handle = embedding.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        logits = model(codes, cond=cond)
    finally:
        handle.remove()
    height, width = codes.shape[1:]
    dep = torch.zeros(height, width, *cond.shape[1:], dtype=torch.bool)
    for i in range(height):
        for j in range(width):
            (grad,) = torch.autograd.grad(logits[0, :, i, j].sum(), captured[0], retain_graph=True)
            dep[i, j] = grad[0].abs().sum(dim=-1) > 0
    return dep


def test_a_conditioned_network_stays_causal_in_the_codes_and_sees_the_whole_cond_grid():
    model = _cond_model(num_layers=6)
    codes, cond = _codes((1, 6, 6)), _codes((1, 3, 3), CK, seed=4)
    captured: list[torch.Tensor] = []
    handle = model.embedding.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        logits = model(codes, cond=cond)
    finally:
        handle.remove()
    prefix = _raster_prefix(6, 6)
    for i in range(6):
        for j in range(6):
            (grad,) = torch.autograd.grad(logits[0, :, i, j].sum(), captured[0], retain_graph=True)
            seen = grad[0].abs().sum(dim=-1) > 0
            assert not (seen & ~prefix[i, j]).any(), f"logits at ({i}, {j}) see the current or a later code"
            assert (seen == prefix[i, j]).all(), f"logits at ({i}, {j}) miss an earlier code"
    # the top grid is fully given, not part of the raster order: the very first logit already sees the cond
    # codes over positions after it, and every cond code informs some logit
    cond_dep = _cond_dependence(model, codes, cond)
    assert cond_dep[0, 0, 0, 0] and cond_dep[0, 0, 1, 1]
    assert cond_dep.any(dim=0).any(dim=0).all()
    changed = cond.clone()
    changed[0, 1, 1] = (changed[0, 1, 1] + 1) % CK
    with torch.no_grad():
        assert not torch.allclose(model(codes, cond=cond)[0, :, 0, 0], model(codes, cond=changed)[0, :, 0, 0])


@pytest.mark.parametrize("num_classes", [None, 2])
def test_incremental_equals_naive_with_cond(num_classes):
    model = _cond_model(seed=8, num_classes=num_classes)
    labels = torch.tensor([0, 1, 1]) if num_classes else None
    cond = _codes((3, 2, 3), CK, seed=5)
    codes = _codes((3, 4, 6))
    with torch.no_grad():
        expected = model(codes, labels, cond)
    assert torch.allclose(incremental_logits(model, codes, labels, cond), expected, atol=1e-5)
    fast = sample_codes(model, 3, (4, 6), 1.0, labels, torch.Generator().manual_seed(9), cond=cond)
    naive = sample_codes_naive(model, 3, (4, 6), 1.0, labels, torch.Generator().manual_seed(9), cond=cond)
    assert torch.equal(fast, naive)
    region = torch.zeros(4, 6, dtype=torch.bool)
    region[2:] = True
    completed = complete_codes(model, codes, region, 1.0, labels, torch.Generator().manual_seed(3), cond=cond)
    reference = sample_codes_naive(model, 3, (4, 6), 1.0, labels, torch.Generator().manual_seed(3), codes, region,
                                   cond=cond)
    assert torch.equal(completed, reference) and torch.equal(completed[:, :2], codes[:, :2])
    # the inferer passes cond through to both
    vqvae, inferer = _tiny_vqvae(), VQVAEPixelCNNInferer()
    _, drawn = inferer.sample(vqvae, model, 3, (4, 6), 1.0, torch.Generator().manual_seed(9), labels, cond=cond)
    assert torch.equal(drawn, naive)
    bits = inferer.get_likelihood(codes, None, model, labels, quantized=True, cond=cond)
    assert torch.allclose(bits, F.cross_entropy(expected, codes, reduction="none") / math.log(2.0), atol=1e-5)


def test_cond_is_checked():
    model, plain = _cond_model(), _model()
    codes = _codes((2, 4, 4))
    with pytest.raises(ValueError, match="cond of shape \\[2, 2, 2\\] is required"):
        model(codes)
    with pytest.raises(ValueError, match="cond must have shape \\[2, 2, 2\\]"):
        model(codes, cond=_codes((2, 4, 4), CK))
    with pytest.raises(ValueError, match="cond must lie in \\[0, 3\\)"):
        model(codes, cond=torch.full((2, 2, 2), 3))
    with pytest.raises(ValueError, match="multiples of cond_factor"):
        model(_codes((2, 3, 4)), cond=_codes((2, 1, 2), CK))
    with pytest.raises(ValueError, match="no spatial conditioning"):
        plain(codes, cond=_codes((2, 2, 2), CK))
    one = _codes((2, 2), CK)  # one grid for the whole batch
    with torch.no_grad():
        assert torch.equal(model(codes, cond=one), model(codes, cond=one.expand(2, 2, 2)))


def test_cond_spec_round_trip_and_old_specs_load_unchanged(tmp_path):
    spec = pixelcnn_spec(K, 8, channels=8, num_layers=2, cond_num_embeddings=CK, cond_factor=4)
    assert spec["cond_num_embeddings"] == CK and spec["cond_factor"] == 4
    network = pixelcnn_from_spec(spec)
    assert network.cond_num_embeddings == CK and network.cond_factor == 4
    path = tmp_path / "bottom_prior.pt"
    torch.save({"model": network.state_dict(), "spec": spec.state_dict()}, path)
    loaded, loaded_spec = load_pixelcnn(path)
    assert loaded_spec.state_dict() == spec.state_dict()
    codes, cond = _codes((1, 8, 8)), _codes((1, 2, 2), CK)
    with torch.no_grad():
        assert torch.equal(loaded(codes, cond=cond), network.eval()(codes, cond=cond))
    # an unconditioned spec gains no keys, and a spec written before conditioning existed loads as it did
    plain = pixelcnn_spec(K, 8, channels=8, num_layers=2)
    assert "cond_num_embeddings" not in plain.values and "cond_factor" not in plain.values
    old = {k: v for k, v in plain.state_dict().items()}
    old_network = GatedPixelCNN(K, channels=8, num_layers=2)
    torch.save({"model": old_network.state_dict(), "spec": old}, tmp_path / "old_prior.pt")
    rebuilt, _ = load_pixelcnn(tmp_path / "old_prior.pt")
    assert rebuilt.cond_num_embeddings is None and rebuilt.cond_embedding is None
    assert set(rebuilt.state_dict()) == set(old_network.state_dict())


# ------------------------------------------------------------------ the conditioning stack: the whole top grid


@pytest.mark.parametrize("cond_layers", [0, 3])
def test_only_the_conditioning_stack_lets_every_position_see_the_whole_top_grid(cond_layers):
    # the demo's shape: a 32x32 bottom grid under an 8x8 top grid (factor 4); the gradient of each bottom logit with
    # respect to each top code says which top codes it can see
    model = _model(num_layers=2, cond_num_embeddings=CK, cond_factor=4, cond_layers=cond_layers)
    codes, cond = _codes((1, 32, 32)), _codes((1, 8, 8), CK, seed=4)
    dep = _cond_dependence(model, codes, cond)
    if cond_layers:
        assert model.cond_stack.reach >= 7 and dep.all(), "a bottom position misses part of the top grid"
    else:  # the former stack: two 3x3 convolutions at the bottom resolution, so only the top codes nearby
        assert not dep[0, 0, 7, 7] and dep[0, 0, 0, 0]
        assert dep.flatten(2).sum(-1).max() <= 9


def test_conditioning_stack_gives_each_fine_position_under_a_top_code_its_own_features():
    model = _model(cond_num_embeddings=CK, cond_factor=4, cond_layers=2)
    with torch.no_grad():
        features = model.cond_features(model.check_cond(torch.zeros(1, 2, 2, dtype=torch.long), 1, (8, 8)))
    assert features.shape == (1, 8, 8, 8)
    block = features[0, :, :4, :4].flatten(1)  # the 16 positions under one top code, all of the same code
    assert not torch.allclose(block[:, :1].expand_as(block), block)


def test_conditioning_stack_keeps_the_samplers_equal_and_round_trips_its_spec(tmp_path):
    spec = pixelcnn_spec(K, 8, channels=8, num_layers=3, cond_num_embeddings=CK, cond_factor=4, cond_layers=3)
    assert spec["cond_layers"] == 3
    torch.manual_seed(0)
    network = pixelcnn_from_spec(spec).eval()
    torch.save({"model": network.state_dict(), "spec": spec.state_dict()}, tmp_path / "prior.pt")
    loaded, _ = load_pixelcnn(tmp_path / "prior.pt")
    codes, cond = _codes((2, 8, 8)), _codes((2, 2, 2), CK)
    with torch.no_grad():
        assert torch.equal(loaded(codes, cond=cond), network(codes, cond=cond))
    assert torch.allclose(incremental_logits(network, codes, None, cond), network(codes, cond=cond), atol=1e-5)
    fast = sample_codes(network, 2, (8, 8), 1.0, None, torch.Generator().manual_seed(2), cond=cond, top_p=0.9)
    naive = sample_codes_naive(network, 2, (8, 8), 1.0, None, torch.Generator().manual_seed(2), cond=cond, top_p=0.9)
    assert torch.equal(fast, naive)
    # a spec without the key (every bottom prior trained before the stack existed) builds the former stack
    assert "cond_layers" not in pixelcnn_spec(K, 8, channels=8, num_layers=2, cond_num_embeddings=CK).values
    with pytest.raises(ValueError, match="cond_layers must be an integer >= 0"):
        GatedPixelCNN(K, cond_num_embeddings=CK, cond_layers=-1)


# ------------------------------------------------------------------ truncated sampling


def test_top_k_keeps_exactly_the_k_most_likely_codes():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    kept = torch.isfinite(truncate_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, True, False], [True, True, False, False, False]]
    assert torch.equal(truncate_logits(logits, top_k=5), logits) and torch.equal(truncate_logits(logits), logits)
    assert torch.equal(truncate_logits(logits, top_k=2)[kept], logits[kept])  # the kept logits are untouched


def test_top_p_keeps_the_smallest_set_holding_p_of_the_mass():
    probs = torch.tensor([[0.05, 0.5, 0.3, 0.15], [0.25, 0.25, 0.25, 0.25]])
    logits = probs.log()
    # 0.5 < 0.7 <= 0.5 + 0.3: the two most likely codes
    assert torch.isfinite(truncate_logits(logits, top_p=0.7))[0].tolist() == [False, True, True, False]
    assert torch.isfinite(truncate_logits(logits, top_p=0.5))[0].tolist() == [False, True, False, False]
    assert torch.isfinite(truncate_logits(logits, top_p=0.81))[0].tolist() == [False, True, True, True]
    assert torch.isfinite(truncate_logits(logits, top_p=0.1))[0].tolist() == [False, True, False, False]
    assert torch.isfinite(truncate_logits(logits, top_p=0.6))[1].sum() == 3  # ties: as many as the mass needs
    assert torch.isfinite(truncate_logits(logits, top_p=1.0)).all()
    # both: top-k first, then the nucleus of what is left
    assert torch.isfinite(truncate_logits(logits, top_k=3, top_p=0.99))[0].tolist() == [False, True, True, True]


def test_truncated_samplers_draw_only_kept_codes_and_top_k_1_is_greedy():
    model = _model(seed=3)
    greedy = sample_codes(model, 3, (4, 5), 1e-4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sample_codes(model, 3, (4, 5), 1.0, generator=torch.Generator().manual_seed(7), top_k=1),
                       greedy)
    codes = sample_codes(model, 4, (4, 5), 1.0, generator=torch.Generator().manual_seed(7), top_k=2)
    logits = model(codes)
    ranks = (logits > logits.gather(1, codes[:, None])).sum(1)  # how many codes were more likely than the drawn
    assert (ranks < 2).all()
    fast = sample_codes(model, 3, (4, 5), 1.0, generator=torch.Generator().manual_seed(5), top_k=3, top_p=0.8)
    naive = sample_codes_naive(model, 3, (4, 5), 1.0, generator=torch.Generator().manual_seed(5), top_k=3, top_p=0.8)
    assert torch.equal(fast, naive)
    for bad, message in (({"top_k": 0}, "top_k must be an integer >= 1"), ({"top_p": 0.0}, "top_p must be"),
                         ({"top_p": 1.5}, "top_p must be")):
        with pytest.raises(ValueError, match=message):
            sample_codes(model, 1, (2, 2), **bad)
