"""Ensembles: several trained bone-age models averaged into one model with the same inputs and output.

The ensemble is an ordinary Functional model ({"image", "male"} -> months), so it is saved as
one `.keras`, exported to ONNX like any other, and the prediction command runs it unchanged.
This is the project's one ensemble mechanism: the members of a run (`ensemble_members`, seeds
seed, seed+1, ...) and, later, the members of several runs.
"""

from __future__ import annotations

import keras
from keras import layers

from utils.model import OUTPUT_LAYER


def average(members: list[keras.Model], name: str = "bone_age_ensemble") -> keras.Model:
    """One model whose output is the mean of the members' months (each run in inference mode)."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    shapes = {tuple(member.input["image"].shape[1:]) for member in members}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members take different image shapes {sorted(shapes)}: they must share preprocessing")
    if len(members) == 1:
        return members[0]
    inputs = {"image": keras.Input(shapes.pop(), name="image"), "male": keras.Input((1,), name="male")}
    # Nested models need unique names inside the ensemble; wrapping keeps each member's weights.
    outputs = [
        keras.Model(member.input, member.output, name=f"member{index}")(inputs, training=False)
        for index, member in enumerate(members, start=1)
    ]
    return keras.Model(inputs, layers.Average(name=OUTPUT_LAYER)(outputs), name=name)


def members_of(model: keras.Model) -> list[keras.Model]:
    """The member models of an ensemble made by `average`, or [model] for a single model."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name.startswith("member")]
    return nested or [model]


def explainable(model: keras.Model) -> keras.Model:
    """The model Grad-CAM can look into: the first member of an ensemble, the model itself otherwise."""
    return members_of(model)[0]
