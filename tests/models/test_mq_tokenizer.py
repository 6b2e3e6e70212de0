"""MQ-Tokenizer: masking, K-way quantization, the straight-through estimator and the loss of PAPER.md eq. 4."""

from __future__ import annotations

import copy

import pytest
import torch

from tokenrec.models.mq_tokenizer import MQTokenizer, mask_elements

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("one_torch_thread")]


def make(**overrides) -> MQTokenizer:
    torch.manual_seed(0)
    settings = dict(input_dim=16, num_levels=3, codebook_size=32, code_dim=8, hidden_dim=32, mask_prob=0.2)
    settings.update(overrides)
    return MQTokenizer(**settings)


def clustered(n: int = 256, dim: int = 16, centres: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centres, dim, generator=g)
    return means[torch.arange(n) % centres] + 0.2 * torch.randn(n, dim, generator=g)


def grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


def nonzero(g: torch.Tensor | None) -> bool:
    return g is not None and bool(g.abs().sum() > 0)


# ----------------------------------------------------------------------------------------- masking


def test_masking_zeroes_a_fraction_rho_of_elements_and_leaves_the_input_untouched() -> None:
    torch.manual_seed(0)
    x = torch.rand(4000, 16) + 0.5  # no zeros of its own
    original = x.clone()
    masked = mask_elements(x, 0.2)
    assert torch.equal(x, original)  # not in place (the public code overwrites its batch)
    zero_fraction = float((masked == 0).float().mean())
    assert zero_fraction == pytest.approx(0.2, abs=0.01)
    kept = masked != 0
    torch.testing.assert_close(masked[kept], x[kept])  # kept elements are not rescaled
    assert float((masked[0:1000] == 0).float().mean()) > 0.15  # every row is masked, the first one included


def test_no_masking_at_inference_and_with_rho_zero() -> None:
    model = make()
    x = clustered()
    model.eval()
    first, second = model(x), model(x)
    assert torch.equal(first.codes, second.codes) and torch.equal(first.recon, second.recon)
    torch.testing.assert_close(first.recon, model.reconstruct(x))
    assert mask_elements(x, 0.0) is x


def test_training_pass_is_masked() -> None:
    model = make(mask_prob=0.5)
    x = clustered()
    model.train()
    torch.manual_seed(1)
    a = model(x).recon
    torch.manual_seed(2)
    b = model(x).recon
    assert not torch.equal(a, b)


# ----------------------------------------------------------------------------------------- loss + gradients


@torch.no_grad()
def test_loss_matches_a_slow_reference_of_the_paper_equation() -> None:
    model = make(beta=0.25).eval()
    x = clustered(40)
    out = model(x)
    recon_sum = codebook_sum = commit_sum = 0.0
    for i in range(x.shape[0]):
        chosen = []
        for k, encoder in enumerate(model.encoders):
            a = encoder(x[i])  # (d_c,)
            dists = ((model.codebooks[k] - a) ** 2).sum(-1)  # (L,)
            w = int(dists.argmin())
            assert int(out.codes[i, k]) == w
            c = model.codebooks[k, w]
            chosen.append(c)
            codebook_sum += float(((a - c) ** 2).sum())
            commit_sum += float(((a - c) ** 2).sum())
        r = model.decoder(torch.stack(chosen).mean(0))  # decoder of the mean codeword
        torch.testing.assert_close(out.recon[i], r)
        recon_sum += float(((x[i] - r) ** 2).sum())
    n = x.shape[0]
    assert float(out.recon_loss) == pytest.approx(recon_sum / n, rel=1e-5)
    assert float(out.codebook_loss) == pytest.approx(codebook_sum / n, rel=1e-5)
    assert float(out.commit_loss) == pytest.approx(commit_sum / n, rel=1e-5)
    expected = (recon_sum + codebook_sum + 0.25 * commit_sum) / n
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)


def test_reconstruction_gradient_reaches_every_encoder_through_straight_through() -> None:
    model = make()
    model.train()
    out = model(clustered())
    out.recon_loss.backward()  # the reconstruction term ALONE
    for k, encoder in enumerate(model.encoders):
        assert all(nonzero(g) for g in grads(encoder)), f"encoder {k} got no gradient from the reconstruction"
    assert all(nonzero(g) for g in grads(model.decoder))
    # straight-through: the reconstruction does not move the codebooks, only the codebook term does
    assert not nonzero(model.codebooks.grad)


def test_codebook_term_moves_codebooks_only_and_commitment_moves_encoders_only() -> None:
    model = make()
    out = model(clustered())
    out.codebook_loss.backward(retain_graph=True)
    assert nonzero(model.codebooks.grad)
    assert not any(nonzero(g) for g in grads(model.encoders))
    model.zero_grad()
    out.commit_loss.backward()
    assert not nonzero(model.codebooks.grad)
    assert all(nonzero(encoder[0].weight.grad) for encoder in model.encoders)


def test_training_changes_encoders_and_lowers_the_reconstruction_error() -> None:
    model = make()
    x = clustered()
    model.init_codebooks(x, torch.Generator().manual_seed(0))
    start = copy.deepcopy(model.state_dict())
    before = float(((model.reconstruct(x) - x) ** 2).mean())
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(100):
        out = model(x)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    for k in range(3):
        key = f"encoders.{k}.0.weight"
        assert not torch.allclose(model.state_dict()[key], start[key]), f"encoder {k} did not train"
    after = float(((model.reconstruct(x) - x) ** 2).mean())
    assert after < 0.5 * before


# ----------------------------------------------------------------------------------------- codebooks


def test_kmeans_init_uses_most_codes_and_codes_are_in_range() -> None:
    model = make(codebook_size=16)
    x = clustered(512, centres=64)
    model.init_codebooks(x, torch.Generator().manual_seed(0))
    codes = model.encode(x)
    assert codes.shape == (512, 3) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
    for level in range(3):
        assert torch.unique(codes[:, level]).numel() >= 14  # random init would leave most codes dead


def test_dead_codes_are_reseeded_onto_encoder_outputs() -> None:
    model = make(codebook_size=8)
    x = clustered(64)
    counts = torch.ones(3, 8, dtype=torch.long)
    counts[1, [2, 5]] = 0  # level 2, codes 2 and 5 were never chosen
    before = model.codebooks.detach().clone()
    moved = model.reseed_dead_codes(x, counts, torch.Generator().manual_seed(0))
    assert moved == 2
    after = model.codebooks.detach()
    changed = (after != before).any(-1)  # (K, L)
    assert changed.nonzero().tolist() == [[1, 2], [1, 5]]
    latents = model.level_inputs(x)[:, 1]  # (N, d_c), unmasked outputs of encoder 2
    for code in (2, 5):
        assert torch.isclose(latents, after[1, code]).all(-1).any()


def test_code_counts_per_level() -> None:
    model = make(codebook_size=4)
    codes = torch.tensor([[0, 1, 3], [0, 2, 3]])
    counts = model.code_counts(codes)
    assert counts.tolist() == [[2, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 2]]
