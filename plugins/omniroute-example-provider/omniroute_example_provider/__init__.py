"""An example omniroute provider plugin: models that answer locally, with no network.

Provider type ``example`` (default prefix ``example/``) offers two models: ``echo``
replies with the text of the last user message, ``reverse`` with that text reversed.
It speaks omniroute's canonical model, so every client API can call it. A "token"
here is a whitespace-separated word. The README of this distribution walks through it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Callable, Iterable

from omniroute import CanonicalProvider, Provider, UpstreamStatusError, hookimpl
from omniroute import canonical as c

#: each model turns the last user message's text into the reply
MODELS: dict[str, Callable[[str], str]] = {
    "echo": lambda text: text,
    "reverse": lambda text: text[::-1],
}
#: split before every word that follows whitespace: "a b  c" -> ["a ", "b  ", "c"]
WORD_BOUNDARY = re.compile(r"(?<=\s)(?=\S)")


class ExampleProvider(CanonicalProvider):
    """Answers ``echo`` and ``reverse`` locally, one word per stream event."""

    type = "example"
    default_prefix = "example"
    description = "Example local provider: echo and reverse models (no network)"
    credential_fields = ()
    requires_credentials = False

    async def stream(self, request: c.Request) -> AsyncIterator[c.Event]:
        transform = MODELS.get(request.model)
        if transform is None:  # raised before the first event: the gateway may try elsewhere
            raise UpstreamStatusError(
                f"The model {request.model!r} does not exist; this provider offers "
                f"{', '.join(MODELS)}.", status=404, code="model_not_found", param="model")
        users = [m for m in request.messages if m.role == "user"]
        text = transform(text_of(users[-1].parts) if users else "")
        prompt = [text_of(request.system), *(text_of(m.parts) for m in request.messages)]
        usage = c.Usage(input_tokens=sum(len(turn.split()) for turn in prompt),
                        output_tokens=len(text.split()))
        yield c.Start(id=f"example-{secrets.token_hex(12)}", model=request.model)
        yield c.PartStart(0, c.Text(""))
        for word in WORD_BOUNDARY.split(text):
            if word:
                yield c.TextDelta(0, word)
        yield c.PartStop(0)
        yield c.Finish("end_turn", usage)

    async def list_models(self) -> list[str]:
        return list(MODELS)


def text_of(parts: Iterable[c.Part]) -> str:
    """The text of a message's parts (images and other parts are left out)."""
    return "".join(part.text for part in parts if isinstance(part, c.Text))


@hookimpl
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    """Called once at start-up by omniroute's plugin manager."""
    register(ExampleProvider)
