import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from conftest import make_tiny_model
from dreamreel.pipeline import objectives
from dreamreel.pipeline.models import LOGITS
from dreamreel.pipeline.objectives import channel, class_logit, layer, parse


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
    ],
)
def test_parse_reads_the_grammar(tiny_model, text, name):
    assert parse(text, tiny_model).name == name


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
        ("(" * 40 + "mid" + ")" * 40, "nested deeper"),
        ("mid+" * 200, "too long"),
    ],
)
def test_parse_errors_name_the_column_and_the_fix(tiny_model, text, message):
    with pytest.raises(ValueError, match=message):
        parse(text, tiny_model)


def test_guide_pulls_towards_the_guide_features(tiny_model, textured):
    guide_img = textured.flip(-2)
    with torch.no_grad():
        g = tiny_model(guide_img, ["conv2"])["conv2"]
    obj = parse("guide:mid", tiny_model, guide_acts=lambda name: g)
    x = textured.clone().requires_grad_(True)
    score = obj(tiny_model(x, obj.layers))
    assert score.shape == (1,)
    # matching an image against its own features scores at least as much as the
    # dot product with the same positions (each picks its best match)
    with torch.no_grad():
        own = objectives.guide("conv2", tiny_model(x, ["conv2"])["conv2"])
        a = tiny_model(x, ["conv2"])
        assert own(a) >= (a["conv2"] ** 2).sum(1).mean() - 1e-5


FUZZ_MODEL = make_tiny_model()
OBJECTIVE_ALPHABET = st.sampled_from(list("conv123midlowhigh class guide:*+-().0123456789'\"_ eE;[]{}\\\n"))


@settings(max_examples=300, deadline=1000)
@given(st.text(OBJECTIVE_ALPHABET, max_size=80) | st.text(max_size=40))
def test_any_objective_text_parses_or_raises_a_value_error(text):
    try:
        objective = parse(text, FUZZ_MODEL)
    except (ValueError, TypeError):
        return
    assert objective.layers <= {"conv1", "conv2", "conv3", LOGITS}
