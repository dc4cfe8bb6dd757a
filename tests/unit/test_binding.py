"""workers/binding.py: Binder and checker, the per-message argument check."""

from __future__ import annotations

import typing
from typing import Any, Literal, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.core.binding import Binder, checker
from workers.exceptions import InvalidRequest

# -- endpoints (with `from __future__ import annotations`, every annotation is a string) ----


def create(self, size_gb: int, name: str | None = None, bootable: bool = False) -> None: ...


def typed(
    self,
    count: int = 0,
    ratio: float = 0.0,
    label: str | None = None,
    limit: Optional[int] = None,  # noqa: UP045 - the typing spelling is what is tested
    ids: list[int] | None = None,
    sizes: dict[str, int] | None = None,
    mode: Literal["a", "b"] = "a",
    anything: Any = None,
    untyped=None,
    flags: list | None = None,
    meta: dict | None = None,
    nested: list[dict[str, list[str | None]]] | None = None,
) -> None: ...


def with_extra(self, name: str, **extra: Any) -> None: ...


def property_endpoint(self, a: int, b: str | None = None, c: list[int] | None = None) -> None: ...


class Custom:
    pass


@pytest.fixture
def create_binder() -> Binder:
    return Binder(create, "volume.create")


@pytest.fixture
def typed_binder() -> Binder:
    return Binder(typed, "svc.typed")


# -- required, optional, missing, unexpected --------------------------------------------


def test_required_and_optional_arguments_bind(create_binder: Binder) -> None:
    assert create_binder.bind((), {"size_gb": 1}) == {"size_gb": 1}
    assert create_binder.bind([], {"size_gb": 2, "name": "a", "bootable": True}) == {
        "size_gb": 2, "name": "a", "bootable": True,
    }


def test_binder_knows_required_and_optional_names(create_binder: Binder) -> None:
    assert create_binder.required == {"size_gb"}
    assert create_binder.optional == {"name", "bootable"}
    assert create_binder.names == ("size_gb", "name", "bootable")
    assert create_binder.describe() == "size_gb: int, name: str | null=..., bootable: bool=..."


def test_missing_argument_is_named_with_the_expected_ones(create_binder: Binder) -> None:
    with pytest.raises(InvalidRequest) as info:
        create_binder.bind((), {"name": "a"})
    assert str(info.value) == (
        "volume.create: missing argument 'size_gb' (int); "
        "expected: size_gb: int, name: str | null=..., bootable: bool=..."
    )
    assert info.value.details == {"argument": "size_gb"}


def test_unexpected_argument_is_named_with_the_expected_ones(create_binder: Binder) -> None:
    with pytest.raises(InvalidRequest) as info:
        create_binder.bind((), {"size_gb": 1, "colour": "red"})
    assert str(info.value) == (
        "volume.create: unexpected argument 'colour'; "
        "expected: size_gb: int, name: str | null=..., bootable: bool=..."
    )
    assert info.value.details == {"argument": "colour"}


def test_positional_arguments_are_refused(create_binder: Binder) -> None:
    with pytest.raises(InvalidRequest) as info:
        create_binder.bind((1,), {})
    message = str(info.value)
    assert message.startswith("volume.create takes keyword arguments only; got 1 positional")
    assert "expected: size_gb: int" in message


@pytest.mark.parametrize("kwargs", [["size_gb", 1], "size_gb=1", None])
def test_arguments_that_are_not_an_object_are_refused(create_binder: Binder, kwargs: Any) -> None:
    with pytest.raises(InvalidRequest, match="the arguments must be a JSON object"):
        create_binder.bind((), kwargs)


def test_wrong_type_names_the_argument_the_expected_type_and_the_value(
    create_binder: Binder,
) -> None:
    with pytest.raises(InvalidRequest) as info:
        create_binder.bind((), {"size_gb": "10"})
    assert str(info.value) == "volume.create: argument 'size_gb' must be int, got str '10'"
    assert info.value.details == {"argument": "size_gb"}


def test_long_values_are_shortened_in_the_message(create_binder: Binder) -> None:
    with pytest.raises(InvalidRequest) as info:
        create_binder.bind((), {"size_gb": "x" * 500})
    message = str(info.value)
    assert message.endswith("...")
    assert len(message) < 150


# -- types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("count", 3),
        ("count", -(2**70)),
        ("ratio", 1.5),
        ("ratio", 2),
        ("label", "x"),
        ("label", None),
        ("limit", 5),
        ("limit", None),
        ("ids", []),
        ("ids", [1, 2]),
        ("ids", None),
        ("sizes", {}),
        ("sizes", {"a": 1}),
        ("mode", "a"),
        ("mode", "b"),
        ("anything", {"deep": [1, None, "x"]}),
        ("anything", None),
        ("untyped", [1, "two"]),
        ("flags", [True, "x", 1.5]),
        ("meta", {"k": [1]}),
        ("nested", [{"k": ["a", None]}, {}]),
    ],
)
def test_values_matching_the_annotation_are_accepted(
    typed_binder: Binder, name: str, value: Any
) -> None:
    assert typed_binder.bind((), {name: value}) == {name: value}


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("count", True, "int"),
        ("count", False, "int"),
        ("count", 1.0, "int"),
        ("count", "1", "int"),
        ("ratio", True, "number"),
        ("ratio", "1.5", "number"),
        ("label", 1, "str | null"),
        ("limit", 1.5, "int | null"),
        ("limit", True, "int | null"),
        ("ids", [1, "2"], "list[int] | null"),
        ("ids", [1, True], "list[int] | null"),
        ("ids", (1, 2), "list[int] | null"),
        ("ids", {"a": 1}, "list[int] | null"),
        ("sizes", {"a": "1"}, "dict[str, int] | null"),
        ("sizes", [1], "dict[str, int] | null"),
        ("mode", "c", "'a' | 'b'"),
        ("mode", None, "'a' | 'b'"),
        ("flags", {"a": 1}, "list | null"),
        ("meta", [], "object | null"),
        ("nested", [{"k": [1]}], "list[dict[str, list[str | null]]] | null"),
    ],
)
def test_values_not_matching_the_annotation_are_refused(
    typed_binder: Binder, name: str, value: Any, expected: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        typed_binder.bind((), {name: value})
    message = str(info.value)
    assert message.startswith(f"svc.typed: argument {name!r} must be {expected}, got ")
    assert info.value.details == {"argument": name}


@pytest.mark.parametrize(
    ("annotation", "good", "bad"),
    [
        (Literal[1, 2], 1, True),
        (Literal[True], True, 1),
        (Optional[str], None, 0),  # noqa: UP045
        (typing.List[int], [1], [1.0]),  # noqa: UP006
        (typing.Dict[str, float], {"a": 1}, {"a": None}),  # noqa: UP006
        (tuple[int, ...], [1, 2], [1, "2"]),
        (bool, False, 0),
        (None, None, 0),
        (type(None), None, ""),
        (object, object(), None),
    ],
)
def test_checker_accepts_exactly_the_json_values_of_an_annotation(
    annotation: Any, good: Any, bad: Any
) -> None:
    check, _name = checker(annotation, "svc.ep(x)")
    assert check(good)
    if annotation is not object:
        assert not check(bad)


@pytest.mark.parametrize(
    ("annotation", "name"),
    [
        (int, "int"),
        (float, "number"),
        (str | None, "str | null"),
        (list[int], "list[int]"),
        (list[Any], "list"),
        (dict[str, Any], "object"),
        (dict[str, list[int]], "dict[str, list[int]]"),
        (Literal["x", 2], "'x' | 2"),
        (Any, "any"),
    ],
)
def test_checker_names_the_type_for_messages(annotation: Any, name: str) -> None:
    assert checker(annotation, "svc.ep(x)")[1] == name


def test_var_keyword_accepts_extra_identifier_named_keys() -> None:
    binder = Binder(with_extra, "svc.with_extra")
    kwargs = {"name": "n", "colour": "red", "size_2": [1]}
    assert binder.bind((), kwargs) == kwargs
    assert binder.describe() == "name: str, **extra"


@pytest.mark.parametrize("key", ["not an identifier", "1abc", "", "a-b"])
def test_var_keyword_refuses_keys_that_are_not_identifiers(key: str) -> None:
    binder = Binder(with_extra, "svc.with_extra")
    with pytest.raises(InvalidRequest) as info:
        binder.bind((), {"name": "n", key: 1})
    assert f"unexpected argument {key!r}" in str(info.value)


def test_var_keyword_still_checks_declared_arguments() -> None:
    binder = Binder(with_extra, "svc.with_extra")
    with pytest.raises(InvalidRequest, match="argument 'name' must be str"):
        binder.bind((), {"name": 1, "extra_key": 2})


def test_string_annotations_are_evaluated() -> None:
    assert isinstance(create.__annotations__["size_gb"], str)
    binder = Binder(create, "volume.create")
    assert binder.checks["size_gb"][1] == "int"
    assert binder.checks["name"][1] == "str | null"


def test_a_function_without_self_binds_all_its_parameters() -> None:
    def ping(host: str) -> None: ...

    binder = Binder(ping, "svc.ping")
    assert binder.names == ("host",)


def test_keyword_only_parameters_are_allowed() -> None:
    def ep(self, *, size: int) -> None: ...

    assert Binder(ep, "svc.ep").bind((), {"size": 1}) == {"size": 1}


# -- annotations refused at construction -------------------------------------------------


def _bad_custom(self, thing: Custom) -> None: ...


def _bad_int_keys(self, table: dict[int, str]) -> None: ...


def _bad_set(self, tags: set[int]) -> None: ...


def _bad_nested(self, items: list[Custom] | None = None) -> None: ...


def _bad_bytes(self, blob: bytes) -> None: ...


@pytest.mark.parametrize(
    ("fn", "where", "detail"),
    [
        (_bad_custom, "svc.ep(thing)", "is not a JSON type"),
        (_bad_int_keys, "svc.ep(table)", "JSON object keys are strings"),
        (_bad_set, "svc.ep(tags)", "is not a JSON type"),
        (_bad_nested, "svc.ep(items)", "is not a JSON type"),
        (_bad_bytes, "svc.ep(blob)", "is not a JSON type"),
    ],
)
def test_annotation_that_is_not_a_json_type_fails_at_construction(
    fn: Any, where: str, detail: str
) -> None:
    with pytest.raises(TypeError) as info:
        Binder(fn, "svc.ep")
    message = str(info.value)
    assert message.startswith(f"{where}: ")
    assert detail in message


def _star_args(self, *names: str) -> None: ...


def _positional_only(self, name: str, /) -> None: ...


@pytest.mark.parametrize(
    ("fn", "where"), [(_star_args, "svc.ep(names)"), (_positional_only, "svc.ep(name)")]
)
def test_star_args_and_positional_only_parameters_fail_at_construction(
    fn: Any, where: str
) -> None:
    with pytest.raises(TypeError) as info:
        Binder(fn, "svc.ep")
    assert str(info.value) == f"{where}: endpoints take keyword arguments only"


# -- property: bind or InvalidRequest, nothing else ------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from(["a", "b", "c"]) | st.text(max_size=6)
#: Arbitrary objects, and objects close enough to the signature that many of them bind.
arguments = st.dictionaries(keys, json_values, max_size=5) | st.fixed_dictionaries(
    {"a": st.integers() | json_values},
    optional={
        "b": st.none() | st.text(max_size=5) | json_values,
        "c": st.none() | st.lists(st.integers(), max_size=4) | json_values,
    },
)
PROPERTY_BINDER = Binder(property_endpoint, "svc.property")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@settings(database=None, deadline=None)
@given(kwargs=arguments)
def test_any_json_arguments_either_bind_correctly_or_raise_invalid_request(
    kwargs: dict[str, Any],
) -> None:
    try:
        bound = PROPERTY_BINDER.bind((), kwargs)
    except InvalidRequest as exc:
        assert exc.details["argument"] is None or isinstance(exc.details["argument"], str)
        return
    assert set(bound) <= {"a", "b", "c"}
    assert _is_int(bound["a"])
    assert bound.get("b") is None or isinstance(bound["b"], str)
    c = bound.get("c")
    assert c is None or (isinstance(c, list) and all(_is_int(x) for x in c))
