"""The restricted pickle machine alone, with a recording object model in place of numpy's."""

from __future__ import annotations

import io
from typing import Any

import pytest

from gateway.weights import WeightsError
from gateway.weights.picklevm import run_pickle


class _Recorder:
    """An object model that names every call it gets and can refuse every global."""

    def __init__(self, *, refuse_globals: bool = False) -> None:
        self.refuse_globals = refuse_globals
        self.calls: list[tuple[str, Any, Any]] = []

    def find_global(self, module: str, name: str) -> object:
        self.calls.append(("global", module, name))
        if self.refuse_globals:
            raise WeightsError("pickle-forbidden", f"no {module}.{name}")
        return f"{module}.{name}"

    def call(self, func: Any, args: tuple[Any, ...]) -> object:
        self.calls.append(("call", func, args))
        return ["made"]

    def build(self, target: Any, state: Any) -> None:
        self.calls.append(("build", target, state))


def _run(data: bytes, model: _Recorder) -> Any:
    return run_pickle(io.BytesIO(data), len(data), model, max_items=100)


def test_a_global_the_model_refuses_stops_the_stream() -> None:
    """GLOBAL asks the object model, and its refusal ends the run before any call is made."""
    model = _Recorder(refuse_globals=True)
    with pytest.raises(WeightsError) as caught:
        _run(b"\x80\x03cos\nsystem\n\x8c\x02ls\x85R.", model)
    assert caught.value.code == "pickle-forbidden"
    assert model.calls == [("global", "os", "system")]


def test_reduce_and_build_are_delegated_to_the_model() -> None:
    """REDUCE gets the global and the argument tuple, BUILD the value REDUCE pushed and the state."""
    model = _Recorder()
    result = _run(b"\x80\x03cmod\nname\nK\x01\x85RK\x02b.", model)
    assert result == ["made"]
    assert model.calls == [
        ("global", "mod", "name"),
        ("call", "mod.name", (1,)),
        ("build", ["made"], 2),
    ]


def test_opcodes_outside_numpys_set_are_refused_whatever_the_model() -> None:
    """An opcode numpy never writes (INST) is forbidden by the machine itself, even for a permissive model."""
    model = _Recorder()
    with pytest.raises(WeightsError) as caught:
        _run(b"\x80\x03(imod\nname\n.", model)
    assert caught.value.code == "pickle-forbidden"
    assert model.calls == []
