"""Model resolution (``omniroute.routing.Router``) and record validation (``accounts``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

from omniroute.accounts import build_combo, build_connection
from omniroute.errors import InvalidRequest, ModelNotFound
from omniroute.plugins import load_plugins
from omniroute.providers.base import Provider
from omniroute.routing import MAX_DEPTH, Route, Router, step_model
from omniroute.storage.store import Combo, Connection


class FakeProvider(Provider):
    type = "fake"
    requires_credentials = False


def provider(conn_id: str, prefix: str, *, priority: int = 0, created: float = 0.0) -> FakeProvider:
    conn = Connection(conn_id, "fake", conn_id, prefix, priority=priority, created_at=created)
    return FakeProvider(conn, None)  # type: ignore[arg-type]  # routing never uses the context


def router(
    providers: list[FakeProvider],
    aliases: dict[str, str] | None = None,
    combos: list[Combo] | None = None,
    models: dict[str, list[str]] | None = None,
) -> Router:
    return Router({p.connection.id: p for p in providers}, aliases or {}, combos or [],
                  models or {})


def targets(route: Route) -> list[tuple[str, str]]:
    return [(t.connection.id, t.model) for t in route.targets]


A, B = provider("conn_a", "a"), provider("conn_b", "b")


def test_prefix_and_model() -> None:
    r = router([A, B])
    route = r.resolve("a/gpt-4o")
    assert route.requested == "a/gpt-4o" and route.combo is None
    assert targets(route) == [("conn_a", "gpt-4o")]
    assert route.targets[0].provider is A
    assert route.targets[0].label == "a/gpt-4o (conn_a)"
    # the first slash splits; the rest is the upstream model, slashes and all
    assert targets(r.resolve("b/meta-llama/Llama-3.3-70B:free")) == [
        ("conn_b", "meta-llama/Llama-3.3-70B:free")]


@pytest.mark.parametrize("model", ["a/", "zz/gpt-4o", "/gpt-4o", "gpt-4o"])
def test_not_a_usable_prefix_is_unknown(model: str) -> None:
    with pytest.raises(ModelNotFound) as info:
        router([A, B]).resolve(model)
    assert info.value.status == 400 and info.value.code == "model_not_found"
    assert info.value.param == "model"
    assert "(a, b)" in info.value.message  # the hint lists the configured prefixes
    assert "GET /v1/models" in info.value.message


def test_unknown_without_providers_hints_how_to_add_one() -> None:
    with pytest.raises(ModelNotFound, match="omniroute providers add"):
        router([]).resolve("gpt-4o")


def test_combo_comes_first() -> None:
    combos = [Combo("c1", "a/gpt-4o", ["b/x"]), Combo("c2", "fast", ["a/m1", "b/m2"])]
    r = router([A, B], aliases={"fast": "a/nope", "a/gpt-4o": "a/nope"}, combos=combos)
    route = r.resolve("a/gpt-4o")  # a combo name beats an alias and a prefix
    assert route.combo == "a/gpt-4o" and targets(route) == [("conn_b", "x")]
    route = r.resolve("fast")
    assert route.combo == "fast"
    assert targets(route) == [("conn_a", "m1"), ("conn_b", "m2")]


def test_combo_steps_forms_order_and_duplicates() -> None:
    combo = Combo("c", "mix", ["b/m", {"model": "m", "provider": "a"}, {"model": "a/m"}, "b/m",
                               "alias"])
    r = router([A, B], aliases={"alias": "a/other"}, combos=[combo])
    assert targets(r.resolve("mix")) == [("conn_b", "m"), ("conn_a", "m"), ("conn_a", "other")]


def test_alias_exact_then_wildcard() -> None:
    aliases = {"gpt-4o": "a/gpt-4o-2024", "gpt-*": "b/gpt-any", "claude-?": "b/claude",
               "chain": "gpt-4o"}
    r = router([A, B], aliases=aliases)
    assert targets(r.resolve("gpt-4o")) == [("conn_a", "gpt-4o-2024")]  # exact beats wildcard
    assert targets(r.resolve("gpt-5")) == [("conn_b", "gpt-any")]
    assert targets(r.resolve("claude-3")) == [("conn_b", "claude")]
    assert targets(r.resolve("chain")) == [("conn_a", "gpt-4o-2024")]  # alias of an alias
    with pytest.raises(ModelNotFound):
        r.resolve("claude-35")  # '?' is exactly one character


def test_prefix_beats_alias_in_the_documented_order() -> None:
    # combo, then prefix/model, then aliases: a configured prefix cannot be shadowed
    r = router([A, B], aliases={"a/gpt-4o": "b/gpt-4o", "x/gpt-4o": "b/gpt-4o"})
    assert targets(r.resolve("a/gpt-4o")) == [("conn_a", "gpt-4o")]
    # an alias whose head is not a configured prefix still applies
    assert targets(r.resolve("x/gpt-4o")) == [("conn_b", "gpt-4o")]


def test_combo_beats_prefix_and_steps_pin_connections_and_carry_weights() -> None:
    a2 = provider("conn_a2", "a")
    combos = [Combo("c1", "a/gpt-4o", ["b/gpt-4o"]),
              Combo("c2", "mix", [{"provider": "a", "model": "m", "connection": "conn_a2",
                                   "weight": 3}, "b/n"])]
    r = router([A, a2, B], combos=combos)
    assert targets(r.resolve("a/gpt-4o")) == [("conn_b", "gpt-4o")]
    route = r.resolve("mix")
    assert [(t.connection.id, t.model, t.group, t.weight) for t in route.targets] == [
        ("conn_a2", "m", 0, 3.0), ("conn_b", "n", 1, 1.0)]


def test_unknown_model_error_suggests_close_names() -> None:
    r = router([A], models={"conn_a": ["gpt-4o-mini"]})
    with pytest.raises(ModelNotFound) as info:
        r.resolve("gpt-4o-mni")
    assert "Did you mean 'gpt-4o-mini'" in info.value.message


def test_bare_model_offered_by_one_prefix_or_several() -> None:
    c = provider("conn_c", "c")
    r = router([A, B, c], models={"conn_a": ["only-a", "shared"], "conn_b": ["shared"],
                                  "conn_c": ["shared"]})
    assert targets(r.resolve("only-a")) == [("conn_a", "only-a")]
    with pytest.raises(InvalidRequest) as info:
        r.resolve("shared")
    assert info.value.status == 400 and info.value.code == "ambiguous_model"
    assert "a/shared, b/shared, c/shared" in info.value.message
    assert not isinstance(info.value, ModelNotFound)


def test_bare_model_of_one_prefix_uses_all_its_connections() -> None:
    a2 = provider("conn_a2", "a", priority=1)
    r = router([A, a2], models={"conn_a": ["m"], "conn_a2": ["m"]})
    assert targets(r.resolve("m")) == [("conn_a", "m"), ("conn_a2", "m")]


def test_pinned_prefix() -> None:
    r = router([A, B], aliases={"m": "b/x"}, combos=[Combo("c", "combo", ["b/y"])])
    assert targets(r.resolve("gpt-4o", prefix="a")) == [("conn_a", "gpt-4o")]
    assert targets(r.resolve("a/gpt-4o", prefix="a")) == [("conn_a", "gpt-4o")]
    # a first segment that is no configured prefix belongs to the model name
    assert targets(r.resolve("org/model", prefix="a")) == [("conn_a", "org/model")]
    # aliases and combos do not apply on a pinned route
    assert targets(r.resolve("m", prefix="a")) == [("conn_a", "m")]
    assert targets(r.resolve("combo", prefix="a")) == [("conn_a", "combo")]
    with pytest.raises(InvalidRequest) as info:
        r.resolve("b/gpt-4o", prefix="a")
    assert info.value.code == "model_provider_mismatch"
    assert "belongs to provider 'b', not 'a'" in info.value.message
    with pytest.raises(ModelNotFound, match="prefix 'zz'"):
        r.resolve("gpt-4o", prefix="zz")


def test_combo_nesting_depth_limit() -> None:
    def chain(n: int) -> list[Combo]:
        """c0 -> c1 -> ... -> c{n-1} -> a/m"""
        return [Combo(f"id{i}", f"c{i}", [f"c{i + 1}" if i < n - 1 else "a/m"]) for i in range(n)]

    assert targets(router([A], combos=chain(MAX_DEPTH)).resolve("c0")) == [("conn_a", "m")]
    with pytest.raises(InvalidRequest) as info:
        router([A], combos=chain(MAX_DEPTH + 1)).resolve("c0")
    assert info.value.code == "model_resolution_loop"


def test_alias_loop_is_a_clean_error() -> None:
    r = router([A], aliases={"x": "y", "y": "x"})
    with pytest.raises(InvalidRequest) as info:
        r.resolve("x")
    assert info.value.code == "model_resolution_loop" and info.value.status == 400


def test_priority_orders_connections_of_one_prefix() -> None:
    conns = [provider("p2", "a", priority=2), provider("p0-late", "a", priority=0, created=20.0),
             provider("p1", "a", priority=1), provider("p0-early", "a", priority=0, created=10.0)]
    r = router(conns)
    assert [cid for cid, _ in targets(r.resolve("a/m"))] == ["p0-early", "p0-late", "p1", "p2"]
    assert [t.connection.id for t in r.resolve("m", prefix="a").targets] == [
        "p0-early", "p0-late", "p1", "p2"]


def test_step_model() -> None:
    assert step_model("a/m") == "a/m"
    assert step_model({"model": "m", "provider": "a"}) == "a/m"
    assert step_model({"model": "a/m", "provider": "a"}) == "a/m"
    assert step_model({"model": "m"}) == "m"
    for bad in (None, 3, {"provider": "a"}, {"model": 5}, ["a/m"]):
        with pytest.raises(ValueError, match="a combo step must be"):
            step_model(bad)


# ---------------------------------------------------------------------- accounts


@pytest.fixture(scope="module")
def plugins() -> Any:
    return load_plugins()


def test_build_connection(plugins: Any) -> None:
    conn = build_connection(plugins, {"preset": "groq", "api_key": "gsk_x", "priority": 3})
    assert conn.type == "openai" and conn.prefix == "groq" and conn.name == "groq"
    assert conn.id.startswith("conn_") and conn.priority == 3 and conn.active is True
    assert conn.settings["base_url"] == "https://api.groq.com/openai/v1"
    assert conn.settings["preset"] == "groq" and conn.credentials == {"api_key": "gsk_x"}

    # an update merges over the existing record and keeps its id and credentials
    updated = build_connection(plugins, {"name": "Groq 2", "active": False}, conn)
    assert updated.id == conn.id and updated.name == "Groq 2" and updated.active is False
    assert updated.credentials == {"api_key": "gsk_x"} and updated.prefix == "groq"
    cleared = build_connection(plugins, {"credentials": {"api_key": "new"}}, conn)
    assert cleared.credentials == {"api_key": "new"}

    custom = build_connection(plugins, {"type": "openai", "base_url": "http://127.0.0.1:8/v1"})
    assert custom.prefix == "openai" and custom.credentials == {}


@pytest.mark.parametrize("spec, message", [
    ({"type": "openai", "base_url": "http://x/v1", "bogus": 1, "extra": 2},
     "unknown field(s): bogus, extra"),
    ({"type": "nosuch"}, "no provider type 'nosuch' is registered"),
    ({}, "give a provider 'type' or a 'preset'"),
    ({"preset": "nope"}, "unknown preset 'nope'"),
    ({"preset": "groq", "type": "other", "api_key": "x"}, "unknown preset 'groq' of type 'other'"),
    ({"preset": "groq", "api_key": "x", "prefix": "a/b"}, "prefix must be"),
    ({"preset": "groq", "api_key": "x", "prefix": ""}, None),  # empty: the preset's prefix
    ({"preset": "groq", "api_key": "x", "priority": True}, "priority must be an integer"),
    ({"preset": "groq", "api_key": "x", "priority": "1"}, "priority must be an integer"),
    ({"preset": "groq", "api_key": "x", "active": "yes"}, "active must be true or false"),
    ({"preset": "groq", "api_key": 123}, "api_key must be a string"),
    ({"preset": "groq", "api_key": "x", "name": 5}, "name must be a string"),
    ({"preset": "groq", "credentials": {"token": "x"}}, "unknown credential field(s): token"),
    ({"preset": "groq", "credentials": "x"}, "credentials must be an object"),
    ({"preset": "groq", "api_key": "x", "settings": []}, "settings must be an object"),
    ({"preset": "groq", "api_key": "x", "models": "gpt"}, "models must be a list"),
    ({"preset": "groq", "api_key": "x", "headers": {"X": 1}}, "headers must map"),
    ({"type": "openai", "base_url": "file:///etc/passwd"}, "base_url must be an http(s) URL"),
])
def test_build_connection_rejects(plugins: Any, spec: dict[str, Any], message: str | None) -> None:
    if message is None:
        assert build_connection(plugins, spec).prefix == "groq"
        return
    with pytest.raises(ValueError) as info:
        build_connection(plugins, spec)
    assert message in str(info.value)


def test_build_combo() -> None:
    combo = build_combo({"name": "best", "steps": ["a/m", {"model": "n", "provider": "b"}]}, [])
    assert combo.id.startswith("combo_") and combo.strategy == "priority"
    assert combo.steps == ["a/m", {"model": "n", "provider": "b"}]
    assert build_combo({"name": "x", "models": ["a/m"]}, []).steps == ["a/m"]  # 'models' too
    renamed = build_combo({"name": "best2"}, [combo], combo)
    assert renamed.id == combo.id and renamed.steps == combo.steps
    # a combo may use another combo
    outer = build_combo({"name": "outer", "steps": ["best", "a/z"]}, [combo])
    assert outer.steps == ["best", "a/z"]


@pytest.mark.parametrize("spec, message", [
    ({"name": "c", "steps": []}, "non-empty list of steps"),
    ({"name": "c"}, "non-empty list of steps"),
    ({"name": "c", "steps": "a/m"}, "non-empty list of steps"),
    ({"steps": ["a/m"]}, "needs a name"),
    ({"name": "  ", "steps": ["a/m"]}, "needs a name"),
    ({"name": "x" * 101, "steps": ["a/m"]}, "needs a name"),
    ({"name": "c", "steps": [42]}, "a combo step must be"),
    ({"name": "c", "steps": ["a/m"], "strategy": "fastest"}, "unknown strategy 'fastest'"),
    ({"name": "c", "steps": ["c"]}, "combo cycle: c -> c"),
])
def test_build_combo_rejects(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        build_combo(spec, [])
    assert message in str(info.value)


def test_build_combo_refuses_cycles_and_duplicates() -> None:
    first = build_combo({"name": "first", "steps": ["a/m"]}, [])
    second = build_combo({"name": "second", "steps": ["first"]}, [first])
    with pytest.raises(ValueError, match="combo cycle: first -> second -> first"):
        build_combo({"steps": ["second"]}, [first, second], first)  # first -> second -> first
    with pytest.raises(ValueError, match="combo cycle"):
        build_combo({"name": "third", "steps": ["third-b"]}, [
            first, second, Combo("id_b", "third-b", ["third"])])
    with pytest.raises(ValueError, match="a combo named 'first' already exists"):
        build_combo({"name": "first", "steps": ["a/x"]}, [first, second])
    # saving a combo under its own name is not a duplicate
    assert build_combo({"steps": ["a/y"]}, [first, second], first).name == "first"


def test_build_combo_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match=r"unknown field\(s\): id, stratgey"):
        build_combo({"name": "c", "steps": ["a/m"], "stratgey": "random", "id": "x"}, [])


def test_a_preset_name_two_types_share_needs_the_type() -> None:
    from omniroute.providers.base import Preset

    class Twin(Provider):
        type = "twin"
        presets: ClassVar[Mapping[str, Preset]] = {
            "groq": Preset("groq", "https://example.invalid/v1", "groq2")}

    plugins = load_plugins()
    plugins.providers["twin"] = Twin
    with pytest.raises(ValueError, match="offered by several provider types"):
        build_connection(plugins, {"preset": "groq", "api_key": "x"})
    conn = build_connection(plugins, {"preset": "groq", "type": "openai", "api_key": "x"})
    assert conn.type == "openai" and conn.prefix == "groq"


# ---------------------------------------------------------------------- combo validation

def resolver(r: Router) -> Any:
    return lambda model: r.resolve(model).targets


@pytest.mark.parametrize("raw, stored", [
    ("priority", "priority"), ("round-robin", "round-robin"), ("Round_Robin", "round-robin"),
    (" P2C ", "p2c"), ("least_used", "least-used"), ("cost-optimized", "cost-optimized"),
])
def test_build_combo_normalises_every_strategy(raw: str, stored: str) -> None:
    assert build_combo({"name": "c", "steps": ["a/m"], "strategy": raw}, []).strategy == stored


def test_build_combo_accepts_every_strategy_the_resilience_layer_has() -> None:
    from omniroute.resilience import STRATEGIES

    for name in STRATEGIES:
        assert build_combo({"name": "c", "steps": ["a/m"], "strategy": name}, []).strategy == name


@pytest.mark.parametrize("strategy", ["fastest", "", None, 3])
def test_build_combo_rejects_unknown_strategies(strategy: Any) -> None:
    with pytest.raises(ValueError,
                       match=r"unknown strategy .* expected one of priority, round-robin"):
        build_combo({"name": "c", "steps": ["a/m"], "strategy": strategy}, [])


@pytest.mark.parametrize("step, message", [
    ({"model": "a/m", "weight": 0}, "step 1: weight must be a positive number"),
    ({"model": "a/m", "weight": -2}, "step 1: weight must be a positive number"),
    ({"model": "a/m", "weight": "3"}, "step 1: weight must be a positive number"),
    ({"model": "a/m", "weight": True}, "step 1: weight must be a positive number"),
    ({"model": "a/m", "weight": float("inf")}, "step 1: weight must be a positive number"),
    ({"model": "a/m", "wieght": 2}, "step 1: unknown field(s) wieght"),
    ({"model": "a/m", "connection": ""}, "step 1: connection must be a connection id or name"),
    ({"model": "a/m", "connection": "nobody"}, "step 1: no connection 'nobody'"),
])
def test_build_combo_checks_step_fields(step: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        build_combo({"name": "c", "steps": [step]}, [], connections=[A.connection])
    assert message in str(info.value)


def test_build_combo_step_connection_by_id_or_name() -> None:
    named = Connection("conn_x", "fake", "work account", "a")
    for pin in ("conn_x", "work account"):
        combo = build_combo({"name": "c", "steps": [{"model": "a/m", "connection": pin,
                                                     "weight": 2.5}]}, [], connections=[named])
        assert combo.steps[0]["connection"] == pin
    # without the connections at hand (pure use) the pin is not checked
    assert build_combo({"name": "c", "steps": [{"model": "a/m", "connection": "x"}]}, [])


def test_build_combo_every_step_must_resolve_with_the_router() -> None:
    r = router([A, B], aliases={"fast": "a/m"}, combos=[Combo("c0", "inner", ["b/x"])],
               models={"conn_a": ["gpt-4o-mini"]})
    ok = build_combo({"name": "c", "steps": ["a/m", "fast", "inner", "gpt-4o-mini",
                                             {"provider": "b", "model": "y"}]}, [],
                     resolve=resolver(r))
    assert len(ok.steps) == 5
    with pytest.raises(ValueError) as info:
        build_combo({"name": "c", "steps": ["a/m", "gpt-4o-mni"]}, [], resolve=resolver(r))
    message = str(info.value)
    assert message.startswith("step 2 ('gpt-4o-mni'): Model 'gpt-4o-mni' is not known.")
    assert "Did you mean 'gpt-4o-mini'" in message
    with pytest.raises(ValueError, match=r"step 1 \('zz/m'\): Model 'zz/m' is not known"):
        build_combo({"name": "c", "steps": ["zz/m"]}, [], resolve=resolver(r))


def test_build_combo_ambiguous_bare_model_is_refused() -> None:
    r = router([A, B], models={"conn_a": ["m"], "conn_b": ["m"]})
    with pytest.raises(ValueError, match=r"step 1 .* several providers; choose one of: a/m, b/m"):
        build_combo({"name": "c", "steps": ["m"]}, [], resolve=resolver(r))


def test_build_combo_pinned_connection_must_serve_its_step() -> None:
    r = router([A, B])
    conns = [A.connection, B.connection]
    with pytest.raises(ValueError, match="step 1 \\('a/m'\\) pins connection 'conn_b', which "
                                         "does not serve that model \\(served by: conn_a\\)"):
        build_combo({"name": "c", "steps": [{"model": "a/m", "connection": "conn_b"}]}, [],
                    connections=conns, resolve=resolver(r))
    assert build_combo({"name": "c", "steps": [{"model": "a/m", "connection": "conn_a"}]}, [],
                       connections=conns, resolve=resolver(r))
    # a pin on a switched-off connection is kept: it serves again when switched on
    off = Connection("conn_off", "fake", "off", "a", active=False)
    assert build_combo({"name": "c", "steps": [{"model": "a/m", "connection": "off"}]}, [],
                       connections=[*conns, off], resolve=resolver(r))


def test_weighted_strategy_uses_the_combo_step_weights() -> None:
    import random
    from collections import Counter

    from omniroute.config import Settings
    from omniroute.resilience import ManualClock, Resilience

    r = Router({p.connection.id: p for p in (A, B)}, {}, [Combo("c", "mix", [
        {"model": "a/m", "weight": 9}, {"model": "b/m", "weight": 1}])], {})
    route = r.resolve("mix")
    assert [t.weight for t in route.targets] == [9.0, 1.0]
    res = Resilience(Settings(), clock=ManualClock(), rng=random.Random(3))
    firsts = Counter(res.plan(route.targets, strategy="weighted").targets[0].connection.id
                     for _ in range(400))
    assert firsts["conn_a"] > 320 and firsts["conn_b"] > 10


@pytest.mark.parametrize("settings, expected", [
    ({"max_concurrency": 2, "rpm": 60, "weight": 0.5}, {"max_concurrency": 2, "rpm": 60,
                                                         "weight": 0.5}),
    ({"max_concurrency": 3.0}, {"max_concurrency": 3}),
    ({"weight": 0}, {"weight": 0}),
])
def test_build_connection_accepts_resilience_settings(
    plugins: Any, settings: dict[str, Any], expected: dict[str, Any]
) -> None:
    base = {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}
    for spec in ({**base, **settings}, {**base, "settings": settings}):
        conn = build_connection(plugins, spec)
        assert {k: conn.settings[k] for k in expected} == expected
    # null removes a limit again
    conn = build_connection(plugins, {**base, **settings})
    cleared = build_connection(plugins, {k: None for k in settings}, conn)
    assert not set(settings) & set(cleared.settings)


@pytest.mark.parametrize("settings, message", [
    ({"max_concurrency": 0}, "max_concurrency must be a positive whole number"),
    ({"max_concurrency": 1.5}, "max_concurrency must be a positive whole number"),
    ({"rpm": "60"}, "rpm must be a positive whole number"),
    ({"rpm": True}, "rpm must be a positive whole number"),
    ({"weight": -1}, "weight must be a number of at least 0"),
    ({"weight": "heavy"}, "weight must be a number of at least 0"),
])
def test_build_connection_rejects_bad_resilience_settings(
    plugins: Any, settings: dict[str, Any], message: str
) -> None:
    base = {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}
    for spec in ({**base, **settings}, {**base, "settings": settings}):
        with pytest.raises(ValueError) as info:
            build_connection(plugins, spec)
        assert message in str(info.value)
