"""Correctness checks the benchmark scripts rely on (no timing here): the projection at a small LoRA shape
against explicit float64 products, the hand loop's LEM loss against a per-token reference, and greedy
WalledEval against `GuardModelJudge` on the same guard and prompt."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_projection

from slowed.slow_tuning import lora_delta_norms, project_lora_


def _float64_norm(model: torch.nn.Module) -> float:
    """sqrt(Σ ‖s·B·A‖_F²) with every product formed in float64 (the independent reference)."""
    total = 0.0
    for module in model.modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            a = module.lora_A["default"].weight.detach().double()
            b = module.lora_B["default"].weight.detach().double()
            total += float(((module.scaling["default"] * (b @ a)) ** 2).sum())
    return math.sqrt(total)


@pytest.fixture
def tiny_lora_model() -> torch.nn.Module:
    return bench_projection.lora_model(bench_projection.SHAPES["tiny"], rank=4)


def test_projection_set_has_the_shapes_of_the_named_model():
    shapes = bench_projection.SHAPES["qwen2.5-1.5b"].linear_shapes()
    assert shapes["k_proj"] == (1536, 256) and shapes["down_proj"] == (8960, 1536)
    model = bench_projection.lora_model(bench_projection.SHAPES["tiny"], rank=4)
    factors = bench_projection.lora_factors(model)
    assert len(factors) == 2 * 7
    lora_A, lora_B, scaling = factors["base_model.model.layers.1.down_proj"]
    assert lora_A.shape == (4, 96) and lora_B.shape == (48, 4) and scaling == 2.0


def test_library_norm_agrees_with_float64_products(tiny_lora_model):
    library = math.sqrt(sum(float(n) ** 2 for n in lora_delta_norms(tiny_lora_model).values()))
    reference = _float64_norm(tiny_lora_model)
    assert reference > 0
    assert abs(library - reference) / reference < 1e-6


def test_benchmark_explicit_path_agrees_with_float64_products(tiny_lora_model):
    explicit = bench_projection.explicit_squared_norms(
        bench_projection.lora_factors(tiny_lora_model), torch.float64
    )
    assert math.isclose(math.sqrt(sum(explicit.values())), _float64_norm(tiny_lora_model), rel_tol=1e-12)


def test_projection_lands_on_tau_in_float64(tiny_lora_model):
    tau = 0.3 * _float64_norm(tiny_lora_model)
    project_lora_(tiny_lora_model, tau)
    assert abs(_float64_norm(tiny_lora_model) - tau) / tau < 1e-6


def test_hand_loop_lem_loss_matches_per_token_reference():
    import bench_training_step

    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5, dtype=torch.float64)
    labels = torch.tensor([[-100, -100, 1, 2, 3, 4], [-100, 0, 1, 2, 3, -100]])
    # Reference: per row, targets at positions t ≥ 1 predicted from t − 1; drop floor(0.5·n) lowest-entropy.
    kept_log_probs = []
    for row in range(2):
        tokens = []
        for t in range(1, 6):
            if labels[row, t] == -100:
                continue
            log_p = torch.log_softmax(logits[row, t - 1], dim=-1)
            entropy = float(-(log_p.exp() * log_p).sum())
            tokens.append((entropy, t, float(log_p[labels[row, t]])))
        dropped = sorted(tokens)[: int(0.5 * len(tokens))]
        kept_log_probs += [token[2] for token in tokens if token not in dropped]
    expected = -sum(kept_log_probs) / len(kept_log_probs)
    loss = bench_training_step.sequence_lem_loss(logits, labels, 0.5)
    assert math.isclose(float(loss), expected, rel_tol=1e-6)  # the loop takes log-softmax in float32


def test_greedy_walledeval_and_guard_judge_generate_the_same_text(tiny_model_dir):
    pytest.importorskip("walledeval")
    import bench_judges

    from slowed.judges.guard import GuardModelJudge

    template = bench_judges.walledeval_guard_template()
    assert "{response}" in template and "$prompt" not in template
    responses = ["Sure, here is a script.", "I'm sorry, but I cannot help with that.", "The answer is (B)."]
    ours = GuardModelJudge(str(tiny_model_dir), template, batch_size=2, max_new_tokens=20, device="cpu")
    theirs = bench_judges.greedy_walledguard(tiny_model_dir)
    our_texts = [v.raw.strip() for v in ours.judge(["p"] * len(responses), responses)]
    their_texts = [bench_judges.walledeval_raw(theirs, response) for response in responses]
    assert our_texts == their_texts
    assert any(text for text in our_texts)  # the comparison is over generated text, not empty strings
