import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from conftest import make_tiny_model
from dreamreel.pipeline import objectives
from dreamreel.pipeline.expr import MAX_NESTING, ExprError
from dreamreel.pipeline.models import LOGITS, PICTURE
from dreamreel.pipeline.objectives import (
    MAX_OBJECTIVE_CHARS, channel, class_logit, enhance, layer, norm, parse_objective, target_key, tv,
)


def acts_of(model, x):
    return model(x, ["conv1", "conv2", "conv3", LOGITS])


def test_layer_score_is_mean_square_per_image(tiny_model, textured):
    x = torch.cat([textured, textured.flip(-1) * 0.5])
    acts = acts_of(tiny_model, x)
    score = layer("conv2")(acts)
    assert score.shape == (2,)
    assert torch.allclose(score, acts["conv2"].pow(2).mean((1, 2, 3)))



def test_per_image_scores_each_image_with_its_own_objective(tiny_model, textured):
    x = torch.cat([textured, textured.flip(-1)]).requires_grad_(True)
    acts = acts_of(tiny_model, x)
    mixed = objectives.per_image([layer("conv1"), channel("conv3", 2)])
    assert mixed.layers == {"conv1", "conv3"} and mixed.name == "conv1 | conv3:2"
    expected = torch.stack([layer("conv1")(acts)[0], channel("conv3", 2)(acts)[1]])
    assert torch.allclose(mixed(acts), expected)
    # image 0's score depends on image 0 alone
    (grad,) = torch.autograd.grad(mixed(acts)[0], x)
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() == 0
    with pytest.raises(ValueError, match="batch of 2"):
        objectives.per_image([layer("conv1")] * 3)(acts)

def test_arithmetic_builds_readable_names_and_adds_scores(tiny_model, textured):
    acts = acts_of(tiny_model, textured)
    combo = layer("conv1") + 0.5 * channel("conv2", 3) - class_logit(2, "tabby cat")
    assert combo.name == "conv1 + 0.5*conv2:3 - class:tabby cat"
    assert combo.layers == {"conv1", "conv2", LOGITS}
    expected = layer("conv1")(acts) + 0.5 * acts["conv2"][:, 3].mean((1, 2)) - acts[LOGITS][:, 2]
    assert torch.allclose(combo(acts), expected)


@pytest.mark.parametrize(
    "text, name",
    [
        ("mid", "conv2"),
        ("conv1 + 0.5*conv3:7", "conv1 + 0.5*conv3:7"),
        ("2 * low - high", "2*conv1 - conv3"),
        ("-(low + mid)", "-1*(conv1 + conv2)"),
        ("class:2", "class:2"),
        ("class:tabby_cat", "class:tabby cat"),
        ("class:'tabby cat' + 0.1*mid", "class:tabby cat + 0.1*conv2"),
        ("low*1e-1", "0.1*conv1"),
        # weights are formulas of the expression language
        ("mid/2", "0.5*conv2"),
        ("2*mid*3", "6*conv2"),
        ("2**-1*high + sqrt(4)*low", "0.5*conv3 + 2*conv1"),
        ("+mid", "conv2"),
        # priors and enhance
        ("mid - 0.5*tv", "conv2 - 0.5*tv"),
        ("mid - tv:1 - 0.1*norm", "conv2 - tv:1 - 0.1*norm"),
        ("tv:2", "tv"),
        ("-norm:2.5", "-1*norm:2.5"),
        ("enhance:mid - 0.2*tv:1.5", "enhance:conv2 - 0.2*tv:1.5"),
    ],
)
def test_parse_reads_the_grammar(tiny_model, text, name):
    assert parse_objective(text, tiny_model).name == name


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("conv9", r"column 1: unknown layer 'conv9'.*did you mean"),
        ("mid +", "column 6: expected a layer name"),
        ("mid * high", "cannot multiply two objectives"),
        ("mid + 2", "cannot add a plain number"),
        ("3", "plain number"),
        ("mid:x", "expected a channel number"),
        ("class:zebra", "unknown class 'zebra'"),
        ("class:9", "class 9 out of range"),
        ("guide:mid", "needs a guide image: pass --guide IMAGE"),
        ("__import__('os')", "unknown layer '__import__'"),
        ("mid; rm", "column 4: unexpected character"),
        ("(" * 40 + "mid" + ")" * 40, f"column {MAX_NESTING + 1}: nested more than {MAX_NESTING} levels"),
        # ~500 signs used to overflow Python's stack (RecursionError) when scored
        ("-" * 497 + "mid", f"column {MAX_NESTING + 1}: nested more than {MAX_NESTING} levels"),
        ("mid+" * 200, f"^--objective: the objective is 800 characters long; the limit is {MAX_OBJECTIVE_CHARS}$"),
        ("1/mid", "column 3: cannot divide by an objective"),
        ("mid**2", "column 1: a power takes numbers, not objectives"),
        ("sin(mid)", r"column 1: sin\(...\) takes numbers, not objectives"),
        ("mid/0", "column 5: .*divides by zero"),
        ("9**9**9*mid", "column 1: 9\\*\\*9\\*\\*9 is too large for a float"),
        # a channel beyond the layer's is refused when parsed, not when the first frame is scored
        ("mid:16", r"column 5: channel 16 is out of range: layer conv2 has 16 channels \(0\.\.15\); "
                   r"`dreamreel layers tiny` lists them"),
        ("low + 0.5*high:99", r"column 16: channel 99 is out of range: layer conv3 has 16 channels"),
        # a weight must stay finite in float32, where scores are computed (1e39 used to make inf, then a black picture)
        ("1e39*mid", r"column 1: the weight 1e\+39 is beyond float32's range \(3\.4e\+38\); use a smaller weight"),
        ("mid - 2e38*2*high", r"column 7: the weight 4e\+38 is beyond float32's range"),
        ("mid - tv:9", "column 10: tv:9: beta must be from 1 to 4"),
        ("mid - tv:0.5", "tv:0.5: beta must be from 1 to 4"),
        ("norm:20", "column 6: norm:20: alpha must be from 1 to 12"),
        ("tv:x", r"column 4: expected a number \(beta\) after 'tv:' but found 'x'"),
        ("norm:", "expected a number \\(alpha\\) after 'norm:' but found the end"),
        ("tv * norm", "cannot multiply two objectives"),
        ("mid + 2*tv**2", "a power takes numbers, not objectives"),
        ("enhance", r"column 1: expected a layer name after 'enhance:' \(enhance:mid\) but found nothing"),
        ("enhance:3", "column 9: expected a layer name after 'enhance:'"),
        ("enhance:conv9", "column 9: unknown layer 'conv9'"),
    ],
)
def test_parse_errors_name_the_column_and_the_fix(tiny_model, text, message):
    with pytest.raises(ExprError, match=message) as caught:
        parse_objective(text, tiny_model)
    assert str(caught.value).count("\n") == 0
    if len(text) <= MAX_OBJECTIVE_CHARS:
        assert str(caught.value).startswith(f"--objective {text!r}: ")


def test_priors_read_only_the_picture_and_enhance_its_targets(tiny_model):
    assert parse_objective("tv - norm:3", tiny_model).layers == {PICTURE}
    combo = parse_objective("mid - 0.5*tv + enhance:high", tiny_model)
    assert combo.layers == {"conv2", PICTURE, "conv3"} and combo.targets == {"conv3"}
    assert objectives.per_image([combo, layer("conv1")]).targets == {"conv3"}


def test_tv_is_the_mean_neighbour_variation_in_8_bit_levels():
    x = torch.zeros(1, 3, 4, 5)
    x[..., 2:] = 1.0  # a vertical edge between columns 1 and 2
    acts = {PICTURE: x}
    # pixel pairs over the first 3 rows and 4 columns: one column of 4 crosses the edge, by 255 levels
    assert torch.allclose(tv()(acts), torch.tensor([255.0**2 / 4]))
    assert torch.allclose(tv(1.0)(acts), torch.tensor([255.0 / 4]), atol=1e-3)  # flat pairs: the root of epsilon
    assert tv()({PICTURE: torch.full((2, 3, 6, 6), 0.4)}).eq(0).all()


def test_norm_is_at_most_one_in_range_and_grows_fast_outside():
    inside = norm()({PICTURE: torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))})
    assert 0 < inside < 1
    assert torch.allclose(norm()({PICTURE: torch.full((1, 3, 2, 2), 1.5)}), torch.tensor([2.0**6]))
    assert torch.allclose(norm(2.0)({PICTURE: torch.full((1, 3, 2, 2), 0.0)}), torch.tensor([1.0]))


def test_enhance_scores_the_relative_distance_to_its_target(tiny_model, textured):
    acts = tiny_model(textured, ["conv2"])
    a = acts["conv2"]
    score = enhance("conv2")
    assert score({**acts, target_key("conv2"): a}).abs().max() < 1e-6  # at the target: 0
    # the start picture's own activations against gain 2 times them: -|a - 2a|^2 / |2a|^2 = -1/4
    assert torch.allclose(score({**acts, target_key("conv2"): 2 * a}), torch.tensor([-0.25]))


def test_non_text_objective_is_a_type_error(tiny_model):
    with pytest.raises(TypeError, match="objective must be a string, got int"):
        parse_objective(3, tiny_model)


def test_guide_score_is_the_mean_best_match_dot_product(tiny_model, textured):
    guide_acts = tiny_model(textured.flip(-2), ["conv2"])["conv2"]
    obj = parse_objective("guide:mid", tiny_model, guide_acts=lambda name: guide_acts)
    assert obj.layers == {"conv2"} and obj.name == "guide:conv2"
    acts = tiny_model(textured, ["conv2"])
    x, g = acts["conv2"].flatten(2)[0], guide_acts.flatten(2)[0]  # (C, M), (C, N)
    best = (x.t() @ g).max(dim=1).values  # each position's largest dot product with any guide feature
    assert torch.allclose(obj(acts), best.mean().reshape(1), rtol=1e-5)


def _flat_picture(channel_index, axis):
    picture = torch.zeros(1, 3, 48, 64)
    picture[:, channel_index] = 1.0
    ramp = torch.linspace(0, 1, picture.shape[axis])
    picture[:, 1] = ramp if axis == -1 else ramp[:, None]
    return picture


def _likeness(model, x, guide_acts):
    """Mean over x's positions of the best cosine similarity to a guide feature."""
    a = model(x, ["conv2"])["conv2"].flatten(2)[0]
    g = guide_acts.flatten(2)[0]
    a = a / a.norm(dim=0, keepdim=True).clamp_min(1e-6)
    g = g / g.norm(dim=0, keepdim=True).clamp_min(1e-6)
    return (a.t() @ g).max(1).values.mean().item()


def test_guide_pulls_towards_the_guide_features(tiny_model, textured):
    with torch.no_grad():
        guides = {name: tiny_model(picture, ["conv2"])["conv2"]
                  for name, picture in (("red", _flat_picture(0, -1)), ("blue", _flat_picture(2, -2)))}

    def dream_towards(name):
        obj = parse_objective("guide:mid", tiny_model, guide_acts=lambda layer_name: guides[name])
        x = textured.clone()
        for _ in range(8):
            x.requires_grad_(True)
            (grad,) = torch.autograd.grad(obj(tiny_model(x, obj.layers)).sum(), x)
            x = (x + 0.04 * grad / grad.abs().mean()).clamp(0, 1).detach()
        return x

    for towards, away in (("red", "blue"), ("blue", "red")):
        dreamed = dream_towards(towards)
        # closer to the guide it was pulled to than the start was, and than to the other guide
        assert _likeness(tiny_model, dreamed, guides[towards]) > _likeness(tiny_model, textured, guides[towards]) + 0.02
        assert _likeness(tiny_model, dreamed, guides[towards]) > _likeness(tiny_model, dreamed, guides[away]) + 0.05


FUZZ_MODEL = make_tiny_model()
OBJECTIVE_ALPHABET = st.sampled_from(list("conv123midlowhigh class guide:*+-().0123456789'\"_ eE;[]{}\\\ntrn"))


@settings(max_examples=300, deadline=1000)
@given(st.text(OBJECTIVE_ALPHABET, max_size=80) | st.text(max_size=40))
def test_any_objective_text_parses_or_raises_expr_error(text):
    try:
        objective = parse_objective(text, FUZZ_MODEL)
    except ExprError as error:
        assert "\n" not in str(error)
        return
    assert objective.layers <= {"conv1", "conv2", "conv3", LOGITS, PICTURE}
