"""A restricted pickle stack machine: numpy's opcodes only; globals, calls and BUILD go to an object model."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from gateway.weights.errors import WeightsError
from gateway.weights.npy import read_exact

_MAX_TUPLE = 64
_MAX_STRING = 256
_MAX_LONG_BYTES = 64


class ObjectModel(Protocol):
    """What the stream's GLOBAL, REDUCE and BUILD opcodes may make: the machine knows no types itself.

    Each method raises `WeightsError` to refuse; whatever it returns is pushed as it is.
    """

    def find_global(self, module: str, name: str) -> object:
        """The value GLOBAL / STACK_GLOBAL push for `module.name`."""

    def call(self, func: Any, args: tuple[Any, ...]) -> object:
        """The value REDUCE pushes for `func(*args)` (nothing is ever called for real)."""

    def build(self, target: Any, state: Any) -> None:
        """Apply BUILD's `state` to `target` (the top of the stack, or None if it is empty)."""


class Blob:
    """Bytes from the stream; the object model may release them (`data = None`) once used."""

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes | None, offset: int) -> None:
        self.data = data
        self.offset = offset


def unsupported(why: str) -> WeightsError:
    """The stream is not one numpy writes."""
    return WeightsError(
        "unsupported-pickle",
        f"The object array's pickle stream is not one numpy writes ({why}); save distinct "
        'arrays with np.save("w.npy", np.array([a, b], dtype=object)), or send an NPZ: '
        'np.savez("w.npz", weighting=n_samples, layer_0=a, layer_1=b).',
    )


def forbidden(what: str) -> WeightsError:
    """The stream asks for something a v1 weights file may not hold."""
    return WeightsError(
        "pickle-forbidden",
        f"The pickle stream uses {what}, which is not allowed: only a Python int, a list and "
        "plain numeric numpy arrays may appear in an object .npy; convert each layer with "
        "np.asarray(layer, dtype=np.float32), or send an NPZ: "
        'np.savez("w.npz", weighting=n_samples, layer_0=a, layer_1=b).',
    )


_Mark = object()


@dataclass
class _Machine:
    stream: IO[bytes]
    end: int
    max_items: int
    model: ObjectModel
    stack: list[Any] = field(default_factory=list)
    memo: dict[int, Any] = field(default_factory=dict)

    def pos(self) -> int:
        return self.stream.tell()

    def read(self, size: int) -> bytes:
        if size > self.end - self.pos():
            raise WeightsError("truncated", "The pickle stream ends early: the file is truncated.")
        return read_exact(self.stream.read, size, "The pickle stream")

    def push(self, value: Any) -> None:
        if len(self.stack) >= self.max_items:
            raise unsupported("the pickle stack grows beyond the limit")
        self.stack.append(value)

    def pop(self) -> Any:
        if not self.stack or self.stack[-1] is _Mark:
            raise unsupported("an opcode found no value where it needs one")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        for at in range(len(self.stack) - 1, -1, -1):
            if self.stack[at] is _Mark:
                items = self.stack[at + 1 :]
                del self.stack[at:]
                return items
        raise unsupported("an opcode found no mark")

    def put(self, index: int) -> None:
        if not self.stack or self.stack[-1] is _Mark:
            raise unsupported("memoize with an empty stack")
        if len(self.memo) >= self.max_items and index not in self.memo:
            raise unsupported("the pickle memo grows beyond the limit")
        self.memo[index] = self.stack[-1]

    def get(self, index: int) -> None:
        if index not in self.memo:
            raise unsupported(f"memo entry {index} is read before it is written")
        self.push(self.memo[index])


def run_pickle(stream: IO[bytes], end: int, model: ObjectModel, max_items: int) -> Any:
    """Run the pickle stream at `stream`'s position up to STOP (never past byte `end`); its value.

    `max_items` bounds the stack, the memo and every list. The stream is left just after STOP.
    """
    return _run(_Machine(stream=stream, end=end, max_items=max_items, model=model))


def _string(machine: _Machine, size: int) -> str:
    if size > _MAX_STRING:
        raise unsupported(f"a {size}-byte string")
    try:
        return machine.read(size).decode("utf-8")
    except UnicodeDecodeError:
        raise unsupported("a string that is not UTF-8") from None


def _bytes(machine: _Machine, size: int) -> None:
    offset = machine.pos()
    machine.push(Blob(machine.read(size), offset))


def _uint(machine: _Machine, size: int) -> int:
    return int.from_bytes(machine.read(size), "little")


def _reduce(machine: _Machine) -> None:
    args = machine.pop()
    func = machine.pop()
    if not isinstance(args, tuple):
        raise unsupported("a call without an argument tuple")
    machine.push(machine.model.call(func, args))


def _build(machine: _Machine) -> None:
    state = machine.pop()
    target = machine.stack[-1] if machine.stack else None
    machine.model.build(target, state)


def _tuple(machine: _Machine, items: list[Any]) -> None:
    if len(items) > _MAX_TUPLE:
        raise unsupported(f"a tuple of {len(items)} items")
    machine.push(tuple(items))


def _appends(machine: _Machine, items: list[Any]) -> None:
    target = machine.pop()
    if not isinstance(target, list):
        raise unsupported("APPENDS to something other than a list")
    if len(target) + len(items) > machine.max_items:
        raise unsupported("a list longer than the limit")
    target.extend(items)
    machine.push(target)


def _run(machine: _Machine) -> Any:
    while True:
        op = machine.read(1)
        if op == b"\x80":  # PROTO
            if machine.read(1)[0] > 5:
                raise unsupported("an unknown pickle protocol")
        elif op == b"\x95":  # FRAME: a size hint only
            machine.read(8)
        elif op == b".":  # STOP
            return machine.pop()
        elif op == b"(":  # MARK
            machine.push(_Mark)
        elif op == b"N":
            machine.push(None)
        elif op == b"\x88":
            machine.push(True)
        elif op == b"\x89":
            machine.push(False)
        elif op == b"K":  # BININT1
            machine.push(_uint(machine, 1))
        elif op == b"M":  # BININT2
            machine.push(_uint(machine, 2))
        elif op == b"J":  # BININT
            machine.push(struct.unpack("<i", machine.read(4))[0])
        elif op == b"G":  # BINFLOAT: a float sample count is refused by the type rules, not here
            machine.push(struct.unpack(">d", machine.read(8))[0])
        elif op in (b"\x8a", b"\x8b"):  # LONG1, LONG4
            size = _uint(machine, 1 if op == b"\x8a" else 4)
            if size > _MAX_LONG_BYTES:
                raise unsupported(f"a {size}-byte integer")
            machine.push(int.from_bytes(machine.read(size), "little", signed=True))
        elif op == b"\x8c":  # SHORT_BINUNICODE
            machine.push(_string(machine, _uint(machine, 1)))
        elif op == b"X":  # BINUNICODE
            machine.push(_string(machine, _uint(machine, 4)))
        elif op == b"\x8d":  # BINUNICODE8
            machine.push(_string(machine, _uint(machine, 8)))
        elif op == b"C":  # SHORT_BINBYTES
            _bytes(machine, _uint(machine, 1))
        elif op == b"B":  # BINBYTES
            _bytes(machine, _uint(machine, 4))
        elif op == b"\x8e":  # BINBYTES8
            _bytes(machine, _uint(machine, 8))
        elif op == b")":
            machine.push(())
        elif op in (b"\x85", b"\x86", b"\x87"):  # TUPLE1..3
            count = op[0] - 0x84
            if len(machine.stack) < count:
                raise unsupported("a tuple with too few values")
            _tuple(machine, [machine.pop() for _ in range(count)][::-1])
        elif op == b"t":  # TUPLE
            _tuple(machine, machine.pop_mark())
        elif op == b"]":  # EMPTY_LIST
            machine.push([])
        elif op == b"l":  # LIST
            machine.push(machine.pop_mark())
        elif op == b"a":  # APPEND
            value = machine.pop()
            _appends(machine, [value])
        elif op == b"e":  # APPENDS
            items = machine.pop_mark()
            _appends(machine, items)
        elif op == b"q":  # BINPUT
            machine.put(_uint(machine, 1))
        elif op == b"r":  # LONG_BINPUT
            machine.put(_uint(machine, 4))
        elif op == b"\x94":  # MEMOIZE
            machine.put(len(machine.memo))
        elif op == b"h":  # BINGET
            machine.get(_uint(machine, 1))
        elif op == b"j":  # LONG_BINGET
            machine.get(_uint(machine, 4))
        elif op == b"c":  # GLOBAL
            module = _line(machine)
            machine.push(machine.model.find_global(module, _line(machine)))
        elif op == b"\x93":  # STACK_GLOBAL
            name, module = machine.pop(), machine.pop()
            if not isinstance(module, str) or not isinstance(name, str):
                raise unsupported("STACK_GLOBAL without names")
            machine.push(machine.model.find_global(module, name))
        elif op == b"R":
            _reduce(machine)
        elif op == b"b":
            _build(machine)
        else:
            raise forbidden(f"pickle opcode {op!r}")


def _line(machine: _Machine) -> str:
    raw = bytearray()
    while True:
        ch = machine.read(1)
        if ch == b"\n":
            break
        raw += ch
        if len(raw) > _MAX_STRING:
            raise unsupported("an over-long global name")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise unsupported("a global name that is not ASCII") from None
