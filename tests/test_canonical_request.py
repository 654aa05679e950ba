"""``Request.for_model``: the request for another model, as ``dataclasses.replace`` makes it."""

from __future__ import annotations

import dataclasses

from omniroute.formats import canonical as c


def test_for_model_is_replace_with_the_model_for_every_field() -> None:
    # every field set to a value of its own, none the default
    values = {f.name: object() for f in dataclasses.fields(c.Request)}
    request = c.Request(**values)  # type: ignore[arg-type]
    renamed = request.for_model("other")
    assert renamed == dataclasses.replace(request, model="other")
    assert renamed is not request and renamed.model == "other"
    assert request.model is values["model"]  # the original is left as it was
    for f in dataclasses.fields(c.Request)[1:]:  # a shallow copy: the same objects
        assert getattr(renamed, f.name) is values[f.name]
