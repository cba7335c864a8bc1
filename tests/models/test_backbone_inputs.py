"""A backbone call as one object: its flat form, stacking calls, and the graph layout of a model."""

from __future__ import annotations

import pytest
import torch

from engine.models.backbone_inputs import FIELDS, BackboneInputs, BackboneLayout, graph_dims
from export.networks import make_network
from export.networks.spec import StreamShapes
from tests.support import tiny_random_model


def call(batch: int = 2, seed: int = 0, speed: bool = True) -> BackboneInputs:
    """A call with every kind of input: lists, a list with a None entry, an optional input left out."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(batch, *shape, generator=g)

    return BackboneInputs(sample=r(4, 3, 2, 2), timestep=torch.full((batch, 3), 500.0), audio_tokens=r(3, 2, 5),
                          face_features=r(1, 4, 2, 2), speed_tokens=r(3, 1, 6) if speed else None,
                          reference_keep=torch.ones(batch, dtype=torch.bool), reference_bank=[r(4, 5), r(2, 5)],
                          motion_features=[r(1, 4, 2, 2), None, r(1, 4, 1, 1)], region_masks=[r(3, 4)])


def test_flatten_and_unflatten_are_inverse() -> None:
    inputs = call()
    layout = BackboneLayout.of(inputs)
    assert layout.names() == ["sample", "timestep", "audio_tokens", "face_features", "speed_tokens", "reference_keep",
                              "reference_bank_0", "reference_bank_1", "motion_features_0", "motion_features_2",
                              "region_masks_0"]
    flat = layout.flatten(inputs)
    back = layout.unflatten(flat)
    assert back.image_tokens is None and back.motion_features[1] is None
    assert BackboneLayout.of(back) == layout
    assert all(a is b for a, b in zip(layout.flatten(back), flat, strict=True))
    with pytest.raises(ValueError, match="more than the layout"):
        layout.unflatten([*flat, flat[0]])


def test_a_layout_refuses_a_call_missing_what_it_holds() -> None:
    layout = BackboneLayout.of(call())
    with pytest.raises(ValueError, match="speed_tokens"):
        layout.flatten(call(speed=False))
    short = call()
    short.reference_bank = short.reference_bank[:1]
    with pytest.raises(ValueError, match="reference_bank: expected 2"):
        layout.flatten(short)


def test_calls_of_one_signature_stack_along_the_batch() -> None:
    a, b = call(batch=1, seed=1), call(batch=1, seed=2)
    assert a.signature() == b.signature() != call(batch=1, speed=False).signature()
    stacked = BackboneInputs.cat([a, b])
    for name in FIELDS:
        got, parts = getattr(stacked, name), [getattr(a, name), getattr(b, name)]
        if isinstance(got, torch.Tensor):
            assert torch.equal(got, torch.cat(parts))
        elif isinstance(got, list):
            for i, entry in enumerate(got):
                assert entry is None if parts[0][i] is None else torch.equal(entry, torch.cat([p[i] for p in parts]))
        else:
            assert got is None


def test_the_graph_layout_is_the_exported_backbones_inputs() -> None:
    model = tiny_random_model()
    shapes = StreamShapes.for_model(model.config)
    network = make_network("backbone", model, shapes)
    layout = BackboneLayout.of(graph_dims(model, shapes.latent, shapes.motion_frames))
    assert network.input_names == layout.names()
    dims = network.export_dims()
    sample = network.sample_input(dims)
    inputs = layout.unflatten(sample)
    assert network.feed(inputs).keys() == set(network.input_names)
    with torch.no_grad():
        torch.testing.assert_close(network.module()(*sample), model.backbone(**inputs.kwargs()))
