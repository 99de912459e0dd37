"""A generated corpus of hostile and edge-case weight files, each with the verdict it must get.

`build_corpus(root)` writes every case into its own folder under `root` and returns the cases.
Files are built by hand (raw ZIP records with `struct`, pickle streams as bytes) wherever the
ordinary writers would refuse to produce the damage. Everything is small on disk and fast to make.

A pickle payload that would run code names a marker file in its folder: loading the file with
`pickle` (e.g. `numpy.load(..., allow_pickle=True)`) creates the marker; the gateway must not.
"""

from __future__ import annotations

import builtins
import io
import os
import shlex
import struct
import subprocess
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.weights import ErrorCode, Limits, ValidationPolicy

MAGIC = b"\x93NUMPY"
MARKER_NAME = "MARKER"
KIND_KEY = "__bk_payload_kind__"
LENIENT = ValidationPolicy.lenient()
DEEP = ValidationPolicy(deep=True)


@dataclass(frozen=True)
class Case:
    """One corpus file and the verdict it must get (`expect_code` None: it must be accepted)."""

    name: str
    path: Path
    expect_code: ErrorCode | None
    policy: ValidationPolicy | None = None
    note: str = ""
    marker: Path | None = None
    """A file that exists only if some code ran a pickle payload; it must never appear."""
    live: bool = False
    """A pickle loader really would create `marker` (checked by the tests in a subprocess)."""
    parts: tuple[Path, ...] = ()
    """Non-empty: the case is judged by `layers_to_npz(parts, weighting, ...)`; `path` is its last part."""
    weighting: str | float = 1.0


Built = Path | tuple[Path, ...]
Members = Mapping[str, bytes | np.ndarray[Any, Any]]
Build = Callable[[Path], Built]


@dataclass(frozen=True)
class _Spec:
    name: str
    expect_code: ErrorCode | None
    build: Build
    note: str
    policy: ValidationPolicy | None
    marker: bool
    live: bool
    weighting: str | float


_SPECS: list[_Spec] = []


def case(
    name: str,
    expect_code: ErrorCode | None,
    note: str,
    *,
    policy: ValidationPolicy | None = None,
    marker: bool = False,
    live: bool = False,
    weighting: str | float = 1.0,
) -> Callable[[Build], Build]:
    """Register `build` (which writes into its case folder) as the case `name`."""

    def register(build: Build) -> Build:
        if any(spec.name == name for spec in _SPECS):
            raise ValueError(f"corpus case {name!r} is registered twice")
        _SPECS.append(
            _Spec(name, expect_code, build, note, policy, marker or live, live, weighting)
        )
        return build

    return register


def case_names() -> list[str]:
    """Every case name, in registration order (known without building anything)."""
    return [spec.name for spec in _SPECS]


def build_corpus(root: Path) -> list[Case]:
    """Write every case into `root/<name>/` and describe it."""
    cases: list[Case] = []
    for spec in _SPECS:
        folder = root / spec.name
        folder.mkdir(parents=True)
        built = spec.build(folder)
        parts, path = (built, built[-1]) if isinstance(built, tuple) else ((), built)
        cases.append(
            Case(
                name=spec.name,
                path=path,
                expect_code=spec.expect_code,
                policy=spec.policy,
                note=spec.note,
                marker=marker_path(folder) if spec.marker else None,
                live=spec.live,
                parts=parts,
                weighting=spec.weighting,
            )
        )
    return cases


def marker_path(folder: Path) -> Path:
    """The file a payload in `folder` would create."""
    return folder / MARKER_NAME


def _touch_command(folder: Path) -> str:
    return f"touch {shlex.quote(str(marker_path(folder)))}"


def _open_code(folder: Path) -> str:
    return f"open({str(marker_path(folder))!r}, 'w').close()"


# ------------------------------------------------------------------ .npy and NPZ helpers


def npy(array: np.ndarray[Any, Any], *, allow_pickle: bool = False) -> bytes:
    """What numpy.save writes for `array`."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_header(
    text: str | bytes, version: tuple[int, int] = (1, 0), length: int | None = None
) -> bytes:
    """A `.npy` preamble with any header text, padded like numpy's; `length` may lie."""
    raw = text.encode("latin1") if isinstance(text, str) else text
    size_bytes = 2 if version == (1, 0) else 4
    raw += b" " * ((-(len(MAGIC) + 2 + size_bytes + len(raw) + 1)) % 64) + b"\n"
    declared = len(raw) if length is None else length
    return MAGIC + bytes(version) + declared.to_bytes(size_bytes, "little") + raw


def header(descr: Any, shape: Any, fortran_order: Any = False) -> bytes:
    """A numpy-style header dictionary with any values."""
    return npy_header(repr({"descr": descr, "fortran_order": fortran_order, "shape": shape}))


def write_npz(path: Path, members: Members, *, compress: bool = True) -> Path:
    """An archive of `<key>.npy` members (arrays are encoded with numpy.save, bytes kept as given)."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for key, value in members.items():
            data = value if isinstance(value, bytes) else npy(value)
            archive.writestr(f"{key}.npy", data)
    return path


def deflate(data: bytes, level: int = 9) -> bytes:
    """Raw deflate, as a ZIP member stores it."""
    packer = zlib.compressobj(level, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def weighting_npy(value: float = 10.0) -> bytes:
    """The SDK's weighting member: float64, shape (1,)."""
    return npy(np.array([value], dtype=np.float64))


def learning(layers: Members, weighting: float = 10.0) -> dict[str, bytes | np.ndarray[Any, Any]]:
    """Members of a learning payload: `weighting` first, then the given layers."""
    return {"weighting": weighting_npy(weighting), **layers}


def analytics(
    fields: Members,
) -> dict[str, bytes | np.ndarray[Any, Any]]:
    """Members of an analytics payload: the 0-d unicode kind key, then the fields."""
    return {KIND_KEY: np.array("federated_analytics"), **fields}


def small_layers() -> dict[str, np.ndarray[Any, Any]]:
    """Two small, ordinary layers."""
    return {
        "layer_0": np.arange(12, dtype=np.float32).reshape(3, 4),
        "layer_1": np.linspace(-1.0, 1.0, 5),
    }


@dataclass(frozen=True)
class Entry:
    """One member of a hand-built ZIP; every field the central directory states may lie."""

    name: bytes
    payload: bytes
    """The uncompressed member content."""
    method: int = zipfile.ZIP_STORED
    flags: int = 0
    data: bytes | None = None
    """The bytes written as member data (None: `payload`, deflated for method 8)."""
    crc: int | None = None
    size: int | None = None
    """Declared uncompressed size (None: the truth)."""
    csize: int | None = None
    """Declared compressed size (None: the truth)."""
    offset: int | None = None
    """The central directory's local-header offset (None: where the local record is written)."""
    local: bool = True
    """Write a local record (False: the central entry points elsewhere)."""
    local_name: bytes | None = None
    local_extra: bytes = b""
    central_extra: bytes = b""


def _stored_data(entry: Entry) -> bytes:
    if entry.data is not None:
        return entry.data
    return deflate(entry.payload) if entry.method == zipfile.ZIP_DEFLATED else entry.payload


def local_record(entry: Entry) -> bytes:
    """The local header, name, extra and data of `entry`."""
    data = _stored_data(entry)
    name = entry.name if entry.local_name is None else entry.local_name
    crc = zlib.crc32(entry.payload) if entry.crc is None else entry.crc
    size = len(entry.payload) if entry.size is None else entry.size
    csize = len(data) if entry.csize is None else entry.csize
    fields = (
        20,
        entry.flags,
        entry.method,
        0,
        0x21,
        crc,
        csize,
        size,
        len(name),
        len(entry.local_extra),
    )
    return struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", *fields) + name + entry.local_extra + data


def raw_zip(
    entries: list[Entry],
    *,
    count: int | None = None,
    cd_size: int | None = None,
    cd_offset: int | None = None,
    zip64_end: tuple[int, int, int] | None = None,
    comment: bytes = b"",
) -> bytes:
    """A ZIP written record by record; `count`, `cd_size`, `cd_offset` override the end record.

    `zip64_end` = (entries, directory size, directory offset) adds a ZIP64 end record and locator.
    """
    out = bytearray()
    offsets: list[int] = []
    for entry in entries:
        offsets.append(len(out))
        if entry.local:
            out += local_record(entry)
    start = len(out)
    for entry, own in zip(entries, offsets, strict=True):
        data = _stored_data(entry)
        crc = zlib.crc32(entry.payload) if entry.crc is None else entry.crc
        size = len(entry.payload) if entry.size is None else entry.size
        csize = len(data) if entry.csize is None else entry.csize
        offset = own if entry.offset is None else entry.offset
        fields = (20, 20, entry.flags, entry.method, 0, 0x21, crc, csize, size, len(entry.name))
        out += struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            b"PK\x01\x02",
            *fields,
            len(entry.central_extra),
            0,
            0,
            0,
            0,
            offset,
        )
        out += entry.name + entry.central_extra
    size_cd = len(out) - start
    if zip64_end is not None:
        record_at = len(out)
        entries64, size64, offset64 = zip64_end
        out += struct.pack(
            "<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, entries64, entries64, size64, offset64
        )
        out += struct.pack("<4sIQI", b"PK\x06\x07", 0, record_at, 1)
    total = len(entries) if count is None else count
    out += struct.pack(
        "<4sHHHHIIH",
        b"PK\x05\x06",
        0,
        0,
        min(total, 0xFFFF),
        min(total, 0xFFFF),
        size_cd if cd_size is None else cd_size,
        start if cd_offset is None else cd_offset,
        len(comment),
    )
    return bytes(out + comment)


def zip64_extra(*values: int) -> bytes:
    """A ZIP64 extended-information extra field holding the given 8-byte values."""
    return struct.pack("<HH", 0x0001, 8 * len(values)) + b"".join(
        struct.pack("<Q", v) for v in values
    )


def entries_of(members: Members, method: int = zipfile.ZIP_STORED) -> list[Entry]:
    """Plain entries for `<key>.npy` members."""
    return [
        Entry(f"{key}.npy".encode(), value if isinstance(value, bytes) else npy(value), method)
        for key, value in members.items()
    ]


def valid_npz_bytes(*, compress: bool) -> bytes:
    """A small, valid learning NPZ as numpy.savez(_compressed) writes it."""
    buffer = io.BytesIO()
    save = np.savez_compressed if compress else np.savez
    arrays: dict[str, Any] = {"weighting": np.array([32.0]), **small_layers()}
    save(buffer, **arrays)
    return buffer.getvalue()


def valid_object_npy_bytes() -> bytes:
    """A small, valid v1 object `.npy` as numpy.save writes it."""
    return npy(v1_array(32, list(small_layers().values())), allow_pickle=True)


def v1_array(num_samples: Any, layers: Any, size: int = 2) -> np.ndarray[Any, Any]:
    """The v1 client's object array (num_samples, [ndarray, ...])."""
    array = np.empty(size, dtype=object)
    array[0] = num_samples
    array[1] = layers
    return array


# ------------------------------------------------------------------ pickle helpers


class _Call:
    """Pickles as `func(*args)`: the shape of every booby-trapped object on the wire."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


def system_call(folder: Path) -> _Call:
    """An object whose unpickling runs os.system("touch <marker>")."""
    return _Call(os.system, _touch_command(folder))


def exec_call(folder: Path) -> _Call:
    """An object whose unpickling runs exec("open(<marker>, 'w')")."""
    return _Call(builtins.exec, _open_code(folder))


def popen_call(folder: Path) -> _Call:
    """An object whose unpickling starts `touch <marker>`."""
    return _Call(subprocess.Popen, ["touch", str(marker_path(folder))])


def _text(value: str) -> bytes:
    encoded = value.encode()
    return b"X" + struct.pack("<I", len(encoded)) + encoded


def _short_text(value: str) -> bytes:
    encoded = value.encode()
    return b"\x8c" + bytes([len(encoded)]) + encoded


_GLOBALS = b"cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01cnumpy\ndtype\nq\x02"
_NEW_ARRAY = b"h\x00h\x01K\x00\x85C\x01b\x87R"
_OBJECT_FLAGS = 63  # what numpy's dtype state holds for the object dtype


def _dtype(code: bytes, endian: bytes = _text("|"), flags: int = 0) -> bytes:
    """numpy.dtype(code, False, True) and its BUILD state; both may be any pickle ops."""
    state = b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK" + bytes([flags]) + b"tb"
    return b"h\x02(" + code + b"\x89\x88tR(K\x03" + endian + state


def _shape(shape: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(b"J" + struct.pack("<i", n) for n in shape) + b"t"


def _layer(
    code: str, endian: str, shape: tuple[int, ...], data: bytes, declared: int | None = None
) -> bytes:
    size = len(data) if declared is None else declared
    return (
        _NEW_ARRAY
        + b"(K\x01"
        + _shape(shape)
        + _dtype(_text(code), _text(endian))
        + b"\x89B"
        + struct.pack("<I", size)
        + data
        + b"tb"
    )


def good_layer() -> bytes:
    """Pickle ops building a float32 (2, 2) array."""
    return _layer("f4", "<", (2, 2), np.ones(4, dtype="<f4").tobytes())


def v1_stream(
    num_samples: bytes = b"K\x05",
    layers: bytes | None = None,
    *,
    new_outer: bytes = _NEW_ARRAY,
    outer_dtype: bytes | None = None,
    proto: int = 2,
) -> bytes:
    """A v1 pickle stream laid out like numpy's; every piece may be replaced by hostile ops."""
    return (
        b"\x80"
        + bytes([proto])
        + _GLOBALS
        + new_outer
        + b"(K\x01K\x02\x85"
        + (_dtype(_text("O8"), flags=_OBJECT_FLAGS) if outer_dtype is None else outer_dtype)
        + b"\x89]("
        + num_samples
        + b"]("
        + (good_layer() if layers is None else layers)
        + b"eetb."
    )


def v1_file(stream: bytes) -> bytes:
    """An object `.npy` (shape (2,)) around a pickle stream."""
    return npy_header("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }") + stream


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _v1(folder: Path, stream: bytes) -> Path:
    return _write(folder / "weights.npy", v1_file(stream))


def _np_save_v1(folder: Path, array: np.ndarray[Any, Any]) -> Path:
    return _write(folder / "weights.npy", npy(array, allow_pickle=True))


# ------------------------------------------------------------------ v1 object .npy: code execution


@case(
    "v1_reduce_os_system",
    "pickle-forbidden",
    "GLOBAL os.system + REDUCE inside the layer list",
    live=True,
)
def _v1_reduce_os_system(folder: Path) -> Built:
    return _v1(
        folder, v1_stream(layers=b"cos\nsystem\n" + _text(_touch_command(folder)) + b"\x85R")
    )


@case("v1_reduce_exec", "pickle-forbidden", "builtins.exec via REDUCE", live=True)
def _v1_reduce_exec(folder: Path) -> Built:
    return _v1(
        folder, v1_stream(layers=b"cbuiltins\nexec\n" + _text(_open_code(folder)) + b"\x85R")
    )


@case(
    "v1_reduce_eval",
    "pickle-forbidden",
    "builtins.eval via REDUCE, in the sample-count slot",
    live=True,
)
def _v1_reduce_eval(folder: Path) -> Built:
    code = _text(f"({_open_code(folder)}, 5)[1]")
    return _v1(folder, v1_stream(num_samples=b"cbuiltins\neval\n" + code + b"\x85R"))


@case(
    "v1_import_getattr_system",
    "pickle-forbidden",
    "builtins.__import__('os'), then getattr(..., 'system')(cmd)",
    live=True,
)
def _v1_import_getattr(folder: Path) -> Built:
    # __import__('os') is memoised and popped, then getattr(<memo>, 'system')(cmd).
    ops = (
        b"cbuiltins\n__import__\n"
        + _text("os")
        + b"\x85Rq\x400cbuiltins\ngetattr\nh\x40"
        + _text("system")
        + b"\x86R"
        + _text(_touch_command(folder))
        + b"\x85R"
    )
    return _v1(folder, v1_stream(layers=ops))


@case("v1_subprocess_popen", "pickle-forbidden", "subprocess.Popen(['touch', marker])", live=True)
def _v1_popen(folder: Path) -> Built:
    ops = b"csubprocess\nPopen\n(" + _text("touch") + _text(str(marker_path(folder))) + b"l\x85R"
    return _v1(folder, v1_stream(layers=ops))


@case(
    "v1_stack_global_system",
    "pickle-forbidden",
    "STACK_GLOBAL('os', 'system') under protocol 4",
    live=True,
)
def _v1_stack_global(folder: Path) -> Built:
    ops = (
        _short_text("os")
        + _short_text("system")
        + b"\x93"
        + _text(_touch_command(folder))
        + b"\x85R"
    )
    return _v1(folder, v1_stream(layers=ops, proto=4))


@case(
    "v1_stack_global_import",
    "pickle-forbidden",
    "STACK_GLOBAL builtins.__import__('os'), then getattr",
    live=True,
)
def _v1_stack_global_import(folder: Path) -> Built:
    ops = (
        _short_text("builtins")
        + _short_text("__import__")
        + b"\x93"
        + _text("os")
        + b"\x85Rq\x400"
        + _short_text("builtins")
        + _short_text("getattr")
        + b"\x93h\x40"
        + _text("system")
        + b"\x86R"
        + _text(_touch_command(folder))
        + b"\x85R"
    )
    return _v1(folder, v1_stream(layers=ops, proto=4))


@case("v1_inst_os_system", "pickle-forbidden", "INST opcode calling os.system", live=True)
def _v1_inst(folder: Path) -> Built:
    return _v1(folder, v1_stream(layers=b"(" + _text(_touch_command(folder)) + b"ios\nsystem\n"))


@case("v1_obj_os_system", "pickle-forbidden", "OBJ opcode calling os.system", live=True)
def _v1_obj(folder: Path) -> Built:
    return _v1(folder, v1_stream(layers=b"(cos\nsystem\n" + _text(_touch_command(folder)) + b"o"))


@case(
    "v1_obj_allowed_class",
    "pickle-forbidden",
    "OBJ opcode on numpy.dtype: the opcode itself is refused",
)
def _v1_obj_allowed(folder: Path) -> Built:
    return _v1(folder, v1_stream(layers=b"(cnumpy\ndtype\n" + _text("f8") + b"o"))


@case("v1_newobj_ndarray", "pickle-forbidden", "NEWOBJ opcode on numpy.ndarray")
def _v1_newobj(folder: Path) -> Built:
    return _v1(folder, v1_stream(layers=b"cnumpy\nndarray\n(K\x00\x85t\x81"))


@case("v1_newobj_ex_ndarray", "pickle-forbidden", "NEWOBJ_EX opcode on numpy.ndarray")
def _v1_newobj_ex(folder: Path) -> Built:
    return _v1(folder, v1_stream(layers=b"cnumpy\nndarray\n(K\x00\x85t)\x92", proto=4))


@case(
    "v1_layer_list_system_pickled",
    "pickle-forbidden",
    "numpy.save of a list holding an os.system trap",
    live=True,
)
def _v1_list_system(folder: Path) -> Built:
    return _np_save_v1(folder, v1_array(5, [np.zeros(3, dtype=np.float32), system_call(folder)]))


@case(
    "v1_layer_list_exec_nested",
    "pickle-forbidden",
    "builtins.exec trap nested two lists deep",
    live=True,
)
def _v1_list_exec(folder: Path) -> Built:
    return _np_save_v1(folder, v1_array(5, [np.zeros(3), [[exec_call(folder)]]]))


@case(
    "v1_layer_list_popen_pickled",
    "pickle-forbidden",
    "numpy.save of a list holding a subprocess.Popen trap",
    live=True,
)
def _v1_list_popen(folder: Path) -> Built:
    return _np_save_v1(folder, v1_array(5, [popen_call(folder)]))


@case("v1_num_samples_trap", "pickle-forbidden", "the sample count is an os.system trap", live=True)
def _v1_num_trap(folder: Path) -> Built:
    return _np_save_v1(folder, v1_array(system_call(folder), [np.zeros(3)]))


@case(
    "v1_dtype_args_eval",
    "pickle-forbidden",
    "the outer dtype's code comes from builtins.eval",
    live=True,
)
def _v1_dtype_args(folder: Path) -> Built:
    code = b"cbuiltins\neval\n" + _text(f"({_open_code(folder)}, 'O8')[1]") + b"\x85R"
    return _v1(folder, v1_stream(outer_dtype=_dtype(code, flags=_OBJECT_FLAGS)))


@case(
    "v1_dtype_state_eval",
    "pickle-forbidden",
    "a layer's dtype state (byte order) comes from builtins.eval",
    live=True,
)
def _v1_dtype_state(folder: Path) -> Built:
    endian = b"cbuiltins\neval\n" + _text(f"({_open_code(folder)}, '<')[1]") + b"\x85R"
    layer = (
        _NEW_ARRAY
        + b"(K\x01"
        + _shape((2,))
        + _dtype(_text("f4"), endian)
        + b"\x89B\x08\x00\x00\x00"
        + bytes(8)
        + b"tb"
    )
    return _v1(folder, v1_stream(layers=layer))


@case(
    "v1_reconstruct_eval_subtype",
    "pickle-forbidden",
    "_reconstruct whose subtype is computed by builtins.eval",
    live=True,
)
def _v1_reconstruct_eval(folder: Path) -> Built:
    subtype = (
        b"cbuiltins\neval\n"
        + _text(f"({_open_code(folder)}, __import__('numpy').ndarray)[1]")
        + b"\x85R"
    )
    return _v1(folder, v1_stream(new_outer=b"h\x00" + subtype + b"K\x00\x85C\x01b\x87R"))


@case(
    "v1_reconstruct_memmap_subtype",
    "pickle-forbidden",
    "_reconstruct(numpy.memmap, ...): an ndarray subclass, not ndarray",
)
def _v1_reconstruct_memmap(folder: Path) -> Built:
    return _v1(folder, v1_stream(new_outer=b"h\x00cnumpy\nmemmap\nK\x00\x85C\x01b\x87R"))


@case(
    "v1_reconstruct_dtype_subtype",
    "pickle-forbidden",
    "_reconstruct(numpy.dtype, ...): an allowed global as the wrong subtype",
)
def _v1_reconstruct_dtype(folder: Path) -> Built:
    return _v1(folder, v1_stream(new_outer=b"h\x00h\x02K\x00\x85C\x01b\x87R"))


@case(
    "v1_reconstruct_bad_shape",
    "pickle-forbidden",
    "_reconstruct(ndarray, (1,), b'b'): unexpected arguments",
)
def _v1_reconstruct_shape(folder: Path) -> Built:
    return _v1(folder, v1_stream(new_outer=b"h\x00h\x01K\x01\x85C\x01b\x87R"))


@case("v1_call_ndarray", "pickle-forbidden", "REDUCE calling numpy.ndarray directly")
def _v1_call_ndarray(folder: Path) -> Built:
    return _v1(folder, v1_stream(layers=b"h\x01K\x03\x85\x85R"))


@case(
    "v1_build_on_global",
    "pickle-forbidden",
    "BUILD on the _reconstruct global itself (a __setstate__ gadget)",
)
def _v1_build_global(folder: Path) -> Built:
    return _v1(folder, v1_stream(layers=b"h\x00K\x01b"))


@case(
    "v1_numpy_runstring",
    "pickle-forbidden",
    "numpy.testing's runstring(code, {}) gadget: exec inside numpy",
    live=True,
)
def _v1_runstring(folder: Path) -> Built:
    ops = b"cnumpy.testing._private.utils\nrunstring\n(" + _text(_open_code(folder)) + b"}tR"
    return _v1(folder, v1_stream(layers=ops))


@case(
    "v1_copyreg_reconstructor",
    "pickle-forbidden",
    "copyreg._reconstructor, the protocol-0 object builder",
)
def _v1_copyreg(folder: Path) -> Built:
    return _v1(folder, v1_stream(layers=b"ccopyreg\n_reconstructor\n(h\x01h\x01NtR"))


@case(
    "v1_dotted_global",
    "pickle-forbidden",
    "STACK_GLOBAL('numpy', 'ndarray.tofile'): a dotted attribute path",
)
def _v1_dotted(folder: Path) -> Built:
    return _v1(
        folder,
        v1_stream(layers=_short_text("numpy") + _short_text("ndarray.tofile") + b"\x93", proto=4),
    )


@case("v1_ext1_opcode", "pickle-forbidden", "EXT1: a copyreg extension-registry lookup")
def _v1_ext1(folder: Path) -> Built:
    return _v1(folder, v1_stream(layers=b"\x82\x01"))


@case("v1_persistent_id", "pickle-forbidden", "BINPERSID: a persistent-id lookup")
def _v1_persid(folder: Path) -> Built:
    return _v1(folder, v1_stream(layers=_text("x") + b"Q"))


@case(
    "v1_float_sample_count",
    "not-integer",
    "a float sample count (BINFLOAT is parsed, then refused by the type rules)",
)
def _v1_float_count(folder: Path) -> Built:
    return _np_save_v1(folder, v1_array(5.0, [np.zeros(3)]))


@case(
    "v1_numpy_int_sample_count",
    "pickle-forbidden",
    "numpy.int64 as the sample count: a numpy scalar needs the forbidden 'scalar' global",
)
def _v1_numpy_count(folder: Path) -> Built:
    return _np_save_v1(folder, v1_array(np.int64(5), [np.zeros(3)]))


@case("v1_sample_count_over_int64", "bad-weighting", "a 2**70 sample count (LONG1)")
def _v1_count_huge(folder: Path) -> Built:
    return _v1(folder, v1_stream(num_samples=b"\x8a\x0a" + (1 << 70).to_bytes(10, "little")))


# ------------------------------------------------------------------ v1: non-numeric arrays and odd streams


@case("v1_object_layer", "pickle-forbidden", "a layer that is itself an object array")
def _v1_object_layer(folder: Path) -> Built:
    inner = np.empty(3, dtype=object)
    inner[:] = [1, "a", None]
    return _np_save_v1(folder, v1_array(5, [np.zeros(2), inner]))


@case(
    "v1_structured_layer",
    "pickle-forbidden",
    "a structured (V) layer: only plain numeric dtypes may be pickled",
)
def _v1_structured(folder: Path) -> Built:
    return _np_save_v1(folder, v1_array(5, [np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")])]))


@case("v1_datetime_layer", "pickle-forbidden", "a datetime64 layer (dtype metadata in the state)")
def _v1_datetime(folder: Path) -> Built:
    return _np_save_v1(folder, v1_array(5, [np.zeros(2, dtype="M8[s]")]))


@case(
    "v1_dtype_state_list_endian",
    "pickle-forbidden",
    "a dtype state whose byte-order slot is a list (unhashable)",
)
def _v1_state_list(folder: Path) -> Built:
    return _v1(folder, v1_stream(outer_dtype=_dtype(_text("O8"), b"]", _OBJECT_FLAGS)))


@case(
    "v1_dtype_code_f12",
    "unsupported-dtype",
    "a layer of dtype 'f12' (x86-32 long double): numeric-looking, but not a dtype this numpy has",
)
def _v1_f12(folder: Path) -> Built:
    return _v1(folder, v1_stream(layers=_layer("f12", "<", (1,), bytes(12))))


@case(
    "v1_zero_size_huge_dim",
    "shape-overflow",
    "a layer of shape (0, 2**70) (LONG1 dimension): zero bytes, but no array has that dimension",
)
def _v1_zero_huge(folder: Path) -> Built:
    shape = b"(J\x00\x00\x00\x00\x8a\x09" + (1 << 70).to_bytes(9, "little") + b"t"
    layer = _NEW_ARRAY + b"(K\x01" + shape + _dtype(_text("f4"), _text(">")) + b"\x89C\x00tb"
    return _v1(folder, v1_stream(layers=layer))


@case(
    "v1_dtype_state_fields",
    "pickle-forbidden",
    "a dtype state declaring fields (a structured dtype in disguise)",
)
def _v1_state_fields(folder: Path) -> Built:
    state = (
        b"(K\x03"
        + _text("|")
        + b"N"
        + _text("a")
        + b"\x85NJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )
    return _v1(folder, v1_stream(outer_dtype=b"h\x02(" + _text("O8") + b"\x89\x88tR" + state))


@case("v1_protocol_6", "unsupported-pickle", "a pickle protocol that does not exist yet")
def _v1_proto6(folder: Path) -> Built:
    return _v1(folder, v1_stream(proto=6))


@case(
    "v1_mark_bomb",
    "unsupported-pickle",
    "thousands of MARKs: the stack limit (small member limit)",
    policy=ValidationPolicy(limits=Limits(max_members=4)),
)
def _v1_mark_bomb(folder: Path) -> Built:
    return _v1(folder, b"\x80\x02" + b"(" * 5000 + b".")


@case(
    "v1_self_append_bomb",
    "unsupported-pickle",
    "a list appended to itself thousands of times",
    policy=ValidationPolicy(limits=Limits(max_members=4)),
)
def _v1_self_append(folder: Path) -> Built:
    return _v1(folder, b"\x80\x02]q\x00" + b"h\x00a" * 3000 + b".")


@case(
    "v1_huge_string", "unsupported-pickle", "a BINUNICODE claiming 1 MB (more than any global name)"
)
def _v1_huge_string(folder: Path) -> Built:
    return _v1(folder, v1_stream(layers=b"X" + struct.pack("<I", 1_000_000) + b"os"))


@case("v1_huge_bytes_length", "truncated", "a BINBYTES8 claiming 2**63 bytes in a tiny file")
def _v1_huge_bytes(folder: Path) -> Built:
    return _v1(
        folder, v1_stream(layers=b"\x8e" + struct.pack("<Q", 1 << 63) + b"\x00" * 8, proto=4)
    )


@case("v1_huge_long", "unsupported-pickle", "a LONG4 integer of 4 GiB")
def _v1_huge_long(folder: Path) -> Built:
    return _v1(folder, v1_stream(num_samples=b"\x8b\xff\xff\xff\xff\x01"))


@case("v1_memo_get_unset", "unsupported-pickle", "BINGET of a memo slot never written")
def _v1_memo_get(folder: Path) -> Built:
    return _v1(folder, v1_stream(layers=b"h\xee"))


@case(
    "v1_shared_layer",
    "unsupported-pickle",
    "the same array object twice in the list (memo sharing)",
)
def _v1_shared(folder: Path) -> Built:
    layer = np.arange(6, dtype=np.float32)
    return _np_save_v1(folder, v1_array(5, [layer, layer]))


@case(
    "v1_layer_bytes_short", "shape-mismatch", "a layer whose bytes are fewer than shape x itemsize"
)
def _v1_bytes_short(folder: Path) -> Built:
    return _v1(folder, v1_stream(layers=_layer("f4", "<", (4, 4), bytes(60))))


@case("v1_trailing_data", "shape-mismatch", "bytes after the pickle's STOP")
def _v1_trailing(folder: Path) -> Built:
    return _v1(folder, v1_stream() + b"\x00trailing junk")


@case("v1_cut_in_header", "truncated", "an object .npy cut inside its header")
def _v1_cut_header(folder: Path) -> Built:
    return _write(folder / "weights.npy", v1_file(v1_stream())[:40])


@case("v1_cut_in_pickle", "truncated", "an object .npy cut inside the pickle opcodes")
def _v1_cut_pickle(folder: Path) -> Built:
    data = v1_file(v1_stream())
    return _write(folder / "weights.npy", data[: 128 + 60])


@case("v1_cut_in_layer_bytes", "truncated", "an object .npy cut inside a layer's bytes")
def _v1_cut_bytes(folder: Path) -> Built:
    data = valid_object_npy_bytes()
    return _write(folder / "weights.npy", data[:-30])


@case("v1_num_samples_bool", "not-integer", "True as the sample count (the client refuses bools)")
def _v1_bool(folder: Path) -> Built:
    return _v1(folder, v1_stream(num_samples=b"\x88"))


@case("v1_num_samples_text", "not-integer", "a string as the sample count")
def _v1_text(folder: Path) -> Built:
    return _v1(folder, v1_stream(num_samples=_text("5")))


@case("v1_layers_tuple", "not-list", "the layers in a tuple, not a list")
def _v1_tuple(folder: Path) -> Built:
    return _np_save_v1(folder, v1_array(5, (np.zeros(2), np.ones(2))))


@case("v1_layers_empty", "not-ndarray", "an empty layer list")
def _v1_empty(folder: Path) -> Built:
    return _np_save_v1(folder, v1_array(5, []))


@case("v1_layer_is_int", "not-ndarray", "a plain int among the layers")
def _v1_layer_int(folder: Path) -> Built:
    return _np_save_v1(folder, v1_array(5, [np.zeros(2), 7]))


@case("v1_three_items", "not-object-pair", "an object array of shape (3,)")
def _v1_three(folder: Path) -> Built:
    array = v1_array(5, [np.zeros(2)], size=3)
    array[2] = 1
    return _np_save_v1(folder, array)


@case("v1_negative_samples", "bad-weighting", "a negative sample count (strict)")
def _v1_negative(folder: Path) -> Built:
    return _np_save_v1(folder, v1_array(-3, [np.zeros(2)]))


@case(
    "v1_negative_samples_lenient",
    None,
    "a negative sample count is the client's business when lenient",
    policy=LENIENT,
)
def _v1_negative_lenient(folder: Path) -> Built:
    return _np_save_v1(folder, v1_array(-3, [np.zeros(2)]))


@case(
    "v1_hand_built_baseline",
    None,
    "the hand-built stream every hostile v1 case alters (numpy loads it too)",
)
def _v1_baseline(folder: Path) -> Built:
    return _v1(folder, v1_stream())


@case("v1_valid", None, "the v1 client's own numpy.save output")
def _v1_valid(folder: Path) -> Built:
    return _write(folder / "weights.npy", valid_object_npy_bytes())


@case(
    "v1_valid_edge_layers",
    None,
    "big-endian, Fortran-order, 0-d, empty, float16, complex and bool layers",
)
def _v1_edge(folder: Path) -> Built:
    layers = [
        np.arange(6, dtype=">f4").reshape(2, 3),
        np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
        np.array(1.5, dtype=np.float32),
        np.zeros((0, 4), dtype=np.float32),
        np.zeros((3, 0), dtype=np.float64),
        np.ones(3, dtype=np.float16),
        np.array([1 + 2j], dtype=np.complex64),
        np.array([True, False]),
        np.arange(3, dtype=np.uint8),
    ]
    return _np_save_v1(folder, v1_array(7, layers))


# ------------------------------------------------------------------ object dtypes inside NPZ


def _object_npy(value: Any, shape: tuple[int, ...] = (1,)) -> bytes:
    array = np.empty(shape, dtype=object)
    array[...] = value
    return npy(array, allow_pickle=True)


@case(
    "npz_object_layer",
    "pickle-forbidden",
    "an object-dtype layer_0 holding an os.system trap",
    policy=LENIENT,
    live=True,
)
def _npz_object_layer(folder: Path) -> Built:
    return write_npz(folder / "p.npz", learning({"layer_0": _object_npy(system_call(folder))}))


@case(
    "npz_object_layer_strict",
    "pickle-forbidden",
    "the same object layer under the default policy",
    live=True,
)
def _npz_object_layer_strict(folder: Path) -> Built:
    return write_npz(folder / "p.npz", learning({"layer_0": _object_npy(system_call(folder))}))


@case(
    "npz_object_weighting",
    "pickle-forbidden",
    "an object-dtype weighting holding an exec trap",
    policy=LENIENT,
    live=True,
)
def _npz_object_weighting(folder: Path) -> Built:
    members: Members = {"weighting": _object_npy(exec_call(folder)), **small_layers()}
    return write_npz(folder / "p.npz", members)


@case(
    "npz_object_kind_key",
    "pickle-forbidden",
    "an object-dtype payload-kind key (0-d) holding a trap",
    policy=LENIENT,
    live=True,
)
def _npz_object_kind(folder: Path) -> Built:
    members: Members = {KIND_KEY: _object_npy(system_call(folder), ()), "count": np.array([3])}
    return write_npz(folder / "p.npz", members)


@case(
    "npz_object_extra_key",
    "pickle-forbidden",
    "an object-dtype extra key no rule ever opens",
    policy=LENIENT,
    live=True,
)
def _npz_object_extra(folder: Path) -> Built:
    return write_npz(
        folder / "p.npz", learning({**small_layers(), "notes": _object_npy(system_call(folder))})
    )


@case(
    "npz_object_analytics_field",
    "pickle-forbidden",
    "an object-dtype analytics field",
    policy=LENIENT,
    live=True,
)
def _npz_object_field(folder: Path) -> Built:
    return write_npz(folder / "p.npz", analytics({"histogram": _object_npy(exec_call(folder))}))


@case(
    "npz_object_in_struct_field",
    "pickle-forbidden",
    "a structured dtype with one object field",
    policy=LENIENT,
)
def _npz_object_struct(folder: Path) -> Built:
    return write_npz(
        folder / "p.npz",
        learning({"layer_0": header([("a", "<f4"), ("b", "|O")], (1,)) + bytes(12)}),
    )


# ------------------------------------------------------------------ zip bombs and member counts


_BOMB_BYTES = 64 << 20


@case("zip_bomb_ratio", "zip-bomb", "64 MiB of zeros deflated into ~64 KiB (ratio ~1000)")
def _zip_bomb(folder: Path) -> Built:
    head = header("<f4", (_BOMB_BYTES // 4,))
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    crc = zlib.crc32(head)
    packed = [packer.compress(head)]
    for _ in range(_BOMB_BYTES >> 20):
        packed.append(packer.compress(chunk))
        crc = zlib.crc32(chunk, crc)
    packed.append(packer.flush())
    data = b"".join(packed)
    entries = [
        *entries_of({"weighting": weighting_npy()}),
        Entry(
            b"layer_0.npy",
            b"",
            zipfile.ZIP_DEFLATED,
            data=data,
            crc=crc,
            size=len(head) + _BOMB_BYTES,
        ),
    ]
    return _write(folder / "p.npz", raw_zip(entries))


@case(
    "zip_bomb_total",
    "zip-bomb",
    "unpacks to more than the (small) total limit",
    policy=ValidationPolicy(limits=Limits(max_total_uncompressed_bytes=4096)),
)
def _zip_total(folder: Path) -> Built:
    layers = {f"layer_{i}": np.zeros(512, dtype=np.float32) for i in range(3)}
    return write_npz(folder / "p.npz", learning(layers), compress=False)


@case(
    "zip_bomb_ratio_small_limit",
    "zip-bomb",
    "a member over a small ratio limit",
    policy=ValidationPolicy(limits=Limits(max_compression_ratio=2.0, ratio_floor_bytes=1024)),
)
def _zip_ratio_small(folder: Path) -> Built:
    return write_npz(folder / "p.npz", learning({"layer_0": np.zeros(4096, dtype=np.float32)}))


def _overlap_base() -> tuple[list[Entry], int]:
    entries = entries_of(learning({"layer_0": np.arange(16, dtype=np.float32)}))
    second = len(local_record(entries[0]))
    return entries, second


@case(
    "zip_overlap_same_offset",
    "overlapping-members",
    "two central entries pointing at one local record",
)
def _zip_overlap_same(folder: Path) -> Built:
    entries, second = _overlap_base()
    alias = Entry(b"layer_1.npy", entries[1].payload, offset=second, local=False)
    return _write(folder / "p.npz", raw_zip([*entries, alias]))


@case(
    "zip_overlap_quoted",
    "overlapping-members",
    "member B's local record lies inside member A's stored data",
)
def _zip_overlap_quoted(folder: Path) -> Built:
    weighting = entries_of({"weighting": weighting_npy()})[0]
    inner = Entry(b"layer_1.npy", npy(np.arange(4, dtype=np.float32)))
    inner_record = local_record(inner)
    head = header("|u1", (len(inner_record) + 8,))
    outer = Entry(b"layer_0.npy", head + bytes(8) + inner_record)
    outer_at = len(local_record(weighting))
    inner_at = outer_at + 30 + len(outer.name) + len(head) + 8
    pointer = Entry(inner.name, inner.payload, offset=inner_at, local=False)
    return _write(folder / "p.npz", raw_zip([weighting, outer, pointer]))


@case(
    "zip_overlap_hidden_by_local_extra",
    "overlapping-members",
    "member B lies in the tail of member A's data, hidden by A's long local extra field",
)
def _zip_overlap_extra(folder: Path) -> Built:
    weighting = entries_of({"weighting": weighting_npy()})[0]
    inner = Entry(b"layer_1.npy", npy(np.arange(4, dtype=np.float32)))
    inner_record = local_record(inner)
    head = header("|u1", (64 + len(inner_record),))
    extra = struct.pack("<HH", 0xCAFE, len(inner_record) - 4) + bytes(len(inner_record) - 4)
    outer = Entry(b"layer_0.npy", head + bytes(64) + inner_record, local_extra=extra)
    outer_at = len(local_record(weighting))
    inner_at = outer_at + 30 + len(outer.name) + len(extra) + len(head) + 64
    pointer = Entry(inner.name, inner.payload, offset=inner_at, local=False)
    return _write(folder / "p.npz", raw_zip([weighting, outer, pointer]))


@case(
    "zip_member_into_directory",
    "overlapping-members",
    "a stored member whose declared size runs into the central directory",
)
def _zip_into_directory(folder: Path) -> Built:
    entries = entries_of(learning({"layer_0": np.arange(16, dtype=np.float32)}))
    last = entries[1]
    liar = Entry(last.name, last.payload, size=len(last.payload) + 40, csize=len(last.payload) + 40)
    return _write(folder / "p.npz", raw_zip([entries[0], liar]))


@case(
    "zip_too_many_members",
    "too-many-members",
    "six members against a limit of four",
    policy=ValidationPolicy(limits=Limits(max_members=4)),
)
def _zip_many(folder: Path) -> Built:
    layers = {f"layer_{i}": np.zeros(2, dtype=np.float32) for i in range(5)}
    return write_npz(folder / "p.npz", learning(layers))


@case(
    "zip_eocd_claims_65535",
    "too-many-members",
    "a tiny archive whose end record claims 65535 entries",
)
def _zip_eocd_65535(folder: Path) -> Built:
    entries = entries_of(learning(small_layers()))
    return _write(folder / "p.npz", raw_zip(entries, count=0xFFFF))


@case(
    "zip64_eocd_claims_10_million",
    "too-many-members",
    "a ZIP64 end record claiming 10 million entries in a tiny file",
)
def _zip64_10m(folder: Path) -> Built:
    entries = entries_of(learning(small_layers()))
    plain = raw_zip(entries)
    start = struct.unpack("<I", plain[-6:-2])[0]
    size = struct.unpack("<I", plain[-10:-6])[0]
    data = raw_zip(
        entries,
        count=0xFFFF,
        cd_size=0xFFFFFFFF,
        cd_offset=0xFFFFFFFF,
        zip64_end=(10_000_000, size, start),
    )
    return _write(folder / "p.npz", data)


@case(
    "zip_eocd_understates_members",
    "too-many-members",
    "the end record claims one entry, the directory holds three",
    policy=ValidationPolicy(limits=Limits(max_members=2)),
)
def _zip_understates(folder: Path) -> Built:
    return _write(folder / "p.npz", raw_zip(entries_of(learning(small_layers())), count=1))


# ------------------------------------------------------------------ ZIP64


@case("zip64_numpy_savez_compressed", None, "numpy.savez_compressed output (ZIP64 local extras)")
def _zip64_numpy(folder: Path) -> Built:
    return _write(folder / "p.npz", valid_npz_bytes(compress=True))


@case("zip64_full_records_valid", None, "ZIP64 sizes, offsets and end records everywhere, all true")
def _zip64_full(folder: Path) -> Built:
    entries: list[Entry] = []
    at = 0
    for entry in entries_of(learning(small_layers())):
        full = Entry(
            entry.name,
            entry.payload,
            size=0xFFFFFFFF,
            csize=0xFFFFFFFF,
            offset=0xFFFFFFFF,
            local_extra=zip64_extra(len(entry.payload), len(entry.payload)),
            central_extra=zip64_extra(len(entry.payload), len(entry.payload), at),
        )
        entries.append(full)
        at += len(local_record(full))
    plain = raw_zip(entries)
    size = struct.unpack("<I", plain[-10:-6])[0]
    data = raw_zip(
        entries, count=0xFFFF, cd_size=0xFFFFFFFF, cd_offset=0xFFFFFFFF, zip64_end=(3, size, at)
    )
    return _write(folder / "p.npz", data)


@case(
    "zip64_lying_directory_size",
    "invalid-archive",
    "a ZIP64 end record declaring a 1 TiB central directory",
)
def _zip64_lying_size(folder: Path) -> Built:
    entries = entries_of(learning(small_layers()))
    plain = raw_zip(entries)
    start = struct.unpack("<I", plain[-6:-2])[0]
    data = raw_zip(
        entries,
        count=0xFFFF,
        cd_size=0xFFFFFFFF,
        cd_offset=0xFFFFFFFF,
        zip64_end=(3, 1 << 40, start),
    )
    return _write(folder / "p.npz", data)


@case(
    "zip64_lying_directory_offset",
    "invalid-archive",
    "a ZIP64 end record pointing its directory past the end of the file",
)
def _zip64_lying_offset(folder: Path) -> Built:
    entries = entries_of(learning(small_layers()))
    plain = raw_zip(entries)
    size = struct.unpack("<I", plain[-10:-6])[0]
    data = raw_zip(
        entries,
        count=0xFFFF,
        cd_size=0xFFFFFFFF,
        cd_offset=0xFFFFFFFF,
        zip64_end=(3, size, 1 << 50),
    )
    return _write(folder / "p.npz", data)


@case(
    "zip64_huge_declared_size",
    "zip-bomb",
    "a ZIP64 extra declaring 2**62 uncompressed bytes for a tiny member",
)
def _zip64_huge_size(folder: Path) -> Built:
    entries = entries_of(learning(small_layers()), zipfile.ZIP_DEFLATED)
    last = entries[-1]
    huge = Entry(
        last.name, last.payload, last.method, size=0xFFFFFFFF, central_extra=zip64_extra(1 << 62)
    )
    return _write(folder / "p.npz", raw_zip([*entries[:-1], huge]))


@case(
    "zip64_huge_both_sizes",
    "zip-bomb",
    "a ZIP64 extra declaring 2**62 bytes both packed and unpacked",
)
def _zip64_huge_both(folder: Path) -> Built:
    entries = entries_of(learning(small_layers()))
    last = entries[-1]
    huge = Entry(
        last.name,
        last.payload,
        size=0xFFFFFFFF,
        csize=0xFFFFFFFF,
        central_extra=zip64_extra(1 << 62, 1 << 62),
    )
    return _write(
        folder / "p.npz",
        raw_zip([*entries[:-1], huge]),
    )


@case(
    "zip64_corrupt_extra",
    "invalid-archive",
    "sizes marked 0xFFFFFFFF but the ZIP64 extra is missing its values",
)
def _zip64_corrupt(folder: Path) -> Built:
    entries = entries_of(learning(small_layers()))
    last = entries[-1]
    broken = Entry(
        last.name,
        last.payload,
        size=0xFFFFFFFF,
        csize=0xFFFFFFFF,
        central_extra=struct.pack("<HH", 1, 4) + bytes(4),
    )
    return _write(folder / "p.npz", raw_zip([*entries[:-1], broken]))


@case(
    "zip64_huge_offset",
    "invalid-archive",
    "a ZIP64 extra putting a member's local header at 2**60",
)
def _zip64_huge_offset(folder: Path) -> Built:
    entries = entries_of(learning(small_layers()))
    last = entries[-1]
    moved = Entry(last.name, last.payload, offset=0xFFFFFFFF, central_extra=zip64_extra(1 << 60))
    return _write(folder / "p.npz", raw_zip([*entries[:-1], moved]))


# ------------------------------------------------------------------ member names and flags


def _renamed(name: bytes, *, flags: int = 0) -> list[Entry]:
    entries = entries_of(learning(small_layers()))
    last = entries[-1]
    return [*entries[:-1], Entry(name, last.payload, flags=flags)]


@case("name_duplicate", "duplicate-member", "layer_0.npy twice")
def _name_duplicate(folder: Path) -> Built:
    entries = entries_of(learning(small_layers()))
    return _write(folder / "p.npz", raw_zip([*entries, Entry(b"layer_0.npy", entries[1].payload)]))


@case(
    "name_nul_duplicate",
    "bad-member-name",
    "'layer_1.npy\\0a' and 'layer_1.npy\\0b': the same name once the NUL cuts it",
)
def _name_nul_duplicate(folder: Path) -> Built:
    entries = entries_of(learning(small_layers()))
    twins = [Entry(b"layer_1.npy\x00" + s, entries[-1].payload) for s in (b"a", b"b")]
    return _write(folder / "p.npz", raw_zip([*entries[:-1], *twins]))


@case(
    "name_nul_suffix",
    "bad-member-name",
    "'layer_1.npy\\0.exe': a NUL inside the stored name (readers disagree on it)",
)
def _name_nul(folder: Path) -> Built:
    return _write(folder / "p.npz", raw_zip(_renamed(b"layer_1.npy\x00.exe")))


@case("name_without_npy", "bad-member-name", "'layer_1.bin'")
def _name_no_npy(folder: Path) -> Built:
    return _write(folder / "p.npz", raw_zip(_renamed(b"layer_1.bin")))


@case("name_with_slash", "bad-member-name", "'sub/layer_1.npy'")
def _name_slash(folder: Path) -> Built:
    return _write(folder / "p.npz", raw_zip(_renamed(b"sub/layer_1.npy")))


@case("name_with_dotdot", "bad-member-name", "'../layer_1.npy': a path traversal")
def _name_dotdot(folder: Path) -> Built:
    return _write(folder / "p.npz", raw_zip(_renamed(b"../layer_1.npy")))


@case("name_absolute", "bad-member-name", "'/etc/layer_1.npy'")
def _name_absolute(folder: Path) -> Built:
    return _write(folder / "p.npz", raw_zip(_renamed(b"/etc/layer_1.npy")))


@case("name_with_backslash", "bad-member-name", "'..\\\\layer_1.npy'")
def _name_backslash(folder: Path) -> Built:
    return _write(folder / "p.npz", raw_zip(_renamed(b"..\\layer_1.npy")))


@case("name_empty_key", "bad-member-name", "'.npy': an empty key")
def _name_empty(folder: Path) -> Built:
    return _write(folder / "p.npz", raw_zip(_renamed(b".npy")))


@case("name_control_char", "bad-member-name", "'layer_1\\x1b[2J.npy': an escape sequence")
def _name_control(folder: Path) -> Built:
    return _write(folder / "p.npz", raw_zip(_renamed(b"layer_1\x1b[2J.npy")))


@case("name_newline_learning", "bad-member-name", "'layer_1\\n.npy' in a learning payload")
def _name_newline(folder: Path) -> Built:
    return _write(folder / "p.npz", raw_zip(_renamed(b"layer_1\n.npy")))


@case(
    "name_newline_analytics",
    "bad-member-name",
    "'layer_0\\n.npy' as an analytics field (A2's $ would match it)",
)
def _name_newline_fields(folder: Path) -> Built:
    entries = entries_of(analytics({"count": np.array([3])}))
    return _write(
        folder / "p.npz", raw_zip([*entries, Entry(b"layer_0\n.npy", npy(np.array([1.0])))])
    )


@case("name_directory_entry", "bad-member-name", "a directory entry 'layers/'")
def _name_directory(folder: Path) -> Built:
    entries = entries_of(learning(small_layers()))
    return _write(folder / "p.npz", raw_zip([*entries, Entry(b"layers/", b"")]))


@case(
    "name_local_mismatch",
    "invalid-archive",
    "the local header names a different member than the directory",
)
def _name_local(folder: Path) -> Built:
    entries = entries_of(learning(small_layers()))
    last = entries[-1]
    return _write(
        folder / "p.npz",
        raw_zip([*entries[:-1], Entry(last.name, last.payload, local_name=b"layer_9.npy")]),
    )


@case("flag_encrypted", "encrypted-member", "the traditional-encryption flag bit")
def _flag_encrypted(folder: Path) -> Built:
    return _write(folder / "p.npz", raw_zip(_renamed(b"layer_1.npy", flags=0x1)))


@case("flag_strong_encryption", "encrypted-member", "the strong-encryption flag bit")
def _flag_strong(folder: Path) -> Built:
    return _write(folder / "p.npz", raw_zip(_renamed(b"layer_1.npy", flags=0x40)))


@case("flag_patched_data", "invalid-archive", "the compressed-patched-data flag bit")
def _flag_patched(folder: Path) -> Built:
    return _write(folder / "p.npz", raw_zip(_renamed(b"layer_1.npy", flags=0x20)))


@case("compression_bzip2", "unsupported-compression", "a bzip2 member (zipfile.ZIP_BZIP2)")
def _compression_bzip2(folder: Path) -> Built:
    path = folder / "p.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as archive:
        for key, value in learning(small_layers()).items():
            archive.writestr(f"{key}.npy", value if isinstance(value, bytes) else npy(value))
    return path


@case("compression_lzma", "unsupported-compression", "an LZMA member (zipfile.ZIP_LZMA)")
def _compression_lzma(folder: Path) -> Built:
    path = folder / "p.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_LZMA) as archive:
        for key, value in learning(small_layers()).items():
            archive.writestr(f"{key}.npy", value if isinstance(value, bytes) else npy(value))
    return path


@case("compression_unknown_method", "unsupported-compression", "compression method 99 (AES)")
def _compression_99(folder: Path) -> Built:
    entries = entries_of(learning(small_layers()))
    last = entries[-1]
    return _write(
        folder / "p.npz", raw_zip([*entries[:-1], Entry(last.name, last.payload, method=99)])
    )


@case(
    "stored_size_lie", "invalid-archive", "a stored member whose packed and unpacked sizes differ"
)
def _stored_lie(folder: Path) -> Built:
    entries = entries_of(learning(small_layers()))
    last = entries[-1]
    liar = Entry(last.name, last.payload, size=len(last.payload) * 4)
    return _write(folder / "p.npz", raw_zip([*entries[:-1], liar]))


# ------------------------------------------------------------------ truncation


def _cut(folder: Path, data: bytes, at: int) -> Path:
    return _write(folder / "p.npz", data[:at])


@case(
    "npz_cut_in_local_header",
    "invalid-archive",
    "an NPZ cut 20 bytes in, inside the first local header",
)
def _cut_local(folder: Path) -> Built:
    return _cut(folder, valid_npz_bytes(compress=True), 20)


@case("npz_cut_in_data", "invalid-archive", "an NPZ cut in the middle of its member data")
def _cut_data(folder: Path) -> Built:
    data = valid_npz_bytes(compress=False)
    return _cut(folder, data, len(data) // 2)


@case("npz_without_directory", "invalid-archive", "an NPZ cut just before its central directory")
def _cut_directory(folder: Path) -> Built:
    data = valid_npz_bytes(compress=False)
    return _cut(folder, data, struct.unpack("<I", data[-6:-2])[0])


@case(
    "npz_cut_in_end_record", "invalid-archive", "an NPZ missing the last 10 bytes of its end record"
)
def _cut_eocd(folder: Path) -> Built:
    data = valid_npz_bytes(compress=True)
    return _cut(folder, data, len(data) - 10)


@case("npz_magic_only", "invalid-archive", "the four bytes 'PK\\x03\\x04' and nothing else")
def _cut_magic(folder: Path) -> Built:
    return _write(folder / "p.npz", b"PK\x03\x04")


@case("npz_empty_archive", "missing-weighting", "a valid ZIP with no members at all")
def _empty_zip(folder: Path) -> Built:
    return _write(folder / "p.npz", raw_zip([]))


@case(
    "npz_member_cut_in_npy_header",
    "truncated",
    "a well-formed ZIP whose layer member stops inside its .npy header",
)
def _member_cut(folder: Path) -> Built:
    layer = npy(np.zeros(4, dtype=np.float32))[:30]
    return _write(folder / "p.npz", raw_zip(entries_of(learning({"layer_0": layer}))))


@case("npy_plain_cut_in_header", "truncated", "a plain .npy cut inside its header")
def _npy_cut(folder: Path) -> Built:
    return _write(folder / "layer.npy", npy(np.zeros(4))[:50])


@case("empty_file", "not-a-payload", "zero bytes")
def _empty(folder: Path) -> Built:
    return _write(folder / "empty.bin", b"")


@case("text_file", "not-a-payload", "a text file")
def _text_file(folder: Path) -> Built:
    return _write(folder / "notes.txt", b"weighting=10\nlayer_0=1,2,3\n")


@case("plain_npy", "not-a-payload", "one plain .npy array is not a payload")
def _plain_npy(folder: Path) -> Built:
    return _write(folder / "layer.npy", npy(np.zeros(4)))


@case("zip_with_prefix", "not-a-payload", "a valid NPZ behind 16 junk bytes (self-extractor style)")
def _zip_prefix(folder: Path) -> Built:
    return _write(folder / "p.npz", b"#!/bin/sh\nexit\n\n" + valid_npz_bytes(compress=True))


# ------------------------------------------------------------------ lying .npy headers (in NPZ members)


def _npz_layer(folder: Path, layer: bytes) -> Path:
    return write_npz(folder / "p.npz", learning({"layer_0": layer}))


@case("hdr_data_short", "shape-mismatch", "a header promising 64 bytes over 60 bytes of data")
def _hdr_short(folder: Path) -> Built:
    return _npz_layer(folder, header("<f4", (16,)) + bytes(60))


@case("hdr_data_long", "shape-mismatch", "a header promising 64 bytes over 72 bytes of data")
def _hdr_long(folder: Path) -> Built:
    return _npz_layer(folder, header("<f4", (16,)) + bytes(72))


@case("hdr_length_huge_v2", "header-too-large", "a version 2.0 header length of 4 GiB")
def _hdr_huge(folder: Path) -> Built:
    return _npz_layer(
        folder,
        npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", (2, 0), 0xFFFFFFFF)
        + bytes(4),
    )


@case("hdr_length_over_limit_v1", "header-too-large", "a real 20000-byte version 1.0 header")
def _hdr_long_v1(folder: Path) -> Built:
    return _npz_layer(
        folder,
        npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}" + " " * 20000)
        + bytes(4),
    )


@case("hdr_not_a_dict", "bad-npy-header", "a header that is a list")
def _hdr_list(folder: Path) -> Built:
    return _npz_layer(folder, npy_header("['<f4', False, (1,)]") + bytes(4))


@case("hdr_extra_keys", "bad-npy-header", "a header with an extra key")
def _hdr_extra(folder: Path) -> Built:
    return _npz_layer(
        folder,
        npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}") + bytes(4),
    )


@case("hdr_missing_key", "bad-npy-header", "a header without fortran_order")
def _hdr_missing(folder: Path) -> Built:
    return _npz_layer(folder, npy_header("{'descr': '<f4', 'shape': (1,)}") + bytes(4))


@case("hdr_negative_dim", "bad-npy-header", "shape (-1, 4)")
def _hdr_negative(folder: Path) -> Built:
    return _npz_layer(folder, header("<f4", (-1, 4)))


@case("hdr_bool_dim", "bad-npy-header", "shape (True,)")
def _hdr_bool(folder: Path) -> Built:
    return _npz_layer(folder, header("<f4", (True,)) + bytes(4))


@case("hdr_shape_list", "bad-npy-header", "shape given as a list")
def _hdr_shape_list(folder: Path) -> Built:
    return _npz_layer(folder, header("<f4", [1]) + bytes(4))


@case("hdr_fortran_not_bool", "bad-npy-header", "fortran_order 1 instead of a bool")
def _hdr_fortran(folder: Path) -> Built:
    return _npz_layer(folder, header("<f4", (1,), 1) + bytes(4))


@case("hdr_shape_overflow", "shape-overflow", "shape (2**40, 2**40): the product overflows int64")
def _hdr_overflow(folder: Path) -> Built:
    return _npz_layer(folder, header("<f4", (1 << 40, 1 << 40)))


@case(
    "hdr_zero_size_huge_dim",
    "shape-overflow",
    "shape (0, 2**70): zero elements, but no array can have that dimension",
)
def _hdr_zero_huge(folder: Path) -> Built:
    return _npz_layer(folder, header(">f4", (0, 1 << 70)))


@case("hdr_65_dims_layer", "shape-overflow", "a layer of 65 dimensions (numpy supports 64)")
def _hdr_65_layer(folder: Path) -> Built:
    return _npz_layer(folder, header(">f4", (1,) * 65) + bytes(4))


@case("hdr_65_dims_weighting", "shape-overflow", "a weighting of 65 dimensions, one value")
def _hdr_65_weighting(folder: Path) -> Built:
    members: Members = {
        "weighting": header("<f8", (1,) * 65) + struct.pack("<d", 3.0),
        **small_layers(),
    }
    return write_npz(folder / "p.npz", members)


@case("hdr_version_9_9", "bad-npy-header", "format version 9.9")
def _hdr_version(folder: Path) -> Built:
    data = bytearray(npy(np.zeros(2, dtype=np.float32)))
    data[6:8] = b"\x09\x09"
    return _npz_layer(folder, bytes(data))


@case(
    "hdr_zero_size_overflowing_dims",
    "shape-overflow",
    "shape (0, 2**40, 2**40): zero elements, but numpy refuses the other dimensions' product",
)
def _hdr_zero_overflow(folder: Path) -> Built:
    return _npz_layer(folder, header("<f4", (0, 1 << 40, 1 << 40)))


@case(
    "hdr_subarray_descr_kind_key",
    "unsupported-dtype",
    "a kind key whose descr is a sub-array dtype ('<U19', (2,)): not something numpy writes or reads back",
)
def _hdr_subarray_kind(folder: Path) -> Built:
    text = "federated_analytics".encode("utf-32-le") * 2
    members: Members = {KIND_KEY: header(("<U19", (2,)), ()) + text, "count": np.array([1])}
    return write_npz(folder / "p.npz", members)


@case(
    "hdr_subarray_descr_layer_lenient",
    "unsupported-dtype",
    "a layer whose descr is a sub-array dtype: numpy.load cannot read it back",
    policy=LENIENT,
)
def _hdr_subarray_layer(folder: Path) -> Built:
    return _npz_layer(folder, header(("<f8", (2,)), (3,)) + bytes(48))


@case("hdr_bad_descr", "unsupported-dtype", "a descr numpy cannot parse")
def _hdr_descr(folder: Path) -> Built:
    return _npz_layer(folder, header("<q9z", (1,)) + bytes(4))


@case("hdr_descr_nested_garbage", "unsupported-dtype", "a descr list of nonsense tuples")
def _hdr_descr_nested(folder: Path) -> Built:
    return _npz_layer(folder, header([("a", ("b", ("c", 5)))], (1,)) + bytes(4))


@case(
    "hdr_code_injection",
    "bad-npy-header",
    "a header that is a call expression running os.system",
    marker=True,
)
def _hdr_code(folder: Path) -> Built:
    return _npz_layer(
        folder, npy_header(f"__import__('os').system({_touch_command(folder)!r})") + bytes(4)
    )


@case("hdr_deep_nesting", "bad-npy-header", "a header of 4000 nested brackets")
def _hdr_nesting(folder: Path) -> Built:
    return _npz_layer(folder, npy_header("[" * 4000 + "]" * 4000) + bytes(4))


@case("hdr_v3_bad_utf8", "bad-npy-header", "a version 3.0 header that is not UTF-8")
def _hdr_utf8(folder: Path) -> Built:
    return _npz_layer(
        folder,
        npy_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), '\xff': 1}", (3, 0))
        + bytes(4),
    )


@case("hdr_no_magic", "not-an-array", "a layer member that is not a .npy at all")
def _hdr_no_magic(folder: Path) -> Built:
    return _npz_layer(folder, b"not a numpy array, just text" * 4)


# ------------------------------------------------------------------ non-numeric dtypes


_ODD_DTYPES = {
    "structured": np.dtype([("a", "<f4"), ("b", "<i4")]),
    "datetime": np.dtype("M8[s]"),
    "timedelta": np.dtype("m8[ms]"),
}


def _odd_layer(kind: str) -> Build:
    def build(folder: Path) -> Built:
        return write_npz(
            folder / "p.npz", learning({"layer_0": np.zeros(3, dtype=_ODD_DTYPES[kind])})
        )

    return build


def _odd_field(kind: str) -> Build:
    def build(folder: Path) -> Built:
        return write_npz(
            folder / "p.npz", analytics({"when": np.zeros(3, dtype=_ODD_DTYPES[kind])})
        )

    return build


for _kind in _ODD_DTYPES:
    case(
        f"dtype_{_kind}_layer_strict",
        "not-numeric",
        f"a {_kind} learning layer (strict dtype check)",
    )(_odd_layer(_kind))
    case(
        f"dtype_{_kind}_layer_lenient",
        None,
        f"a {_kind} learning layer: the protocol itself allows it",
        policy=LENIENT,
    )(_odd_layer(_kind))
    case(f"dtype_{_kind}_field_strict", "unsupported-dtype", f"a {_kind} analytics field")(
        _odd_field(_kind)
    )
    case(
        f"dtype_{_kind}_field_lenient",
        "unsupported-dtype",
        f"a {_kind} analytics field (A5 applies when lenient too)",
        policy=LENIENT,
    )(_odd_field(_kind))


@case("dtype_unicode_layer", "not-numeric", "a string learning layer")
def _unicode_layer(folder: Path) -> Built:
    return write_npz(folder / "p.npz", learning({"layer_0": np.array(["a", "b"])}))


@case("dtype_unicode_layer_lenient", None, "a string learning layer when lenient", policy=LENIENT)
def _unicode_layer_lenient(folder: Path) -> Built:
    return _unicode_layer(folder)


# ------------------------------------------------------------------ valid edge cases


@case("ok_big_endian", None, "big-endian layers")
def _ok_big(folder: Path) -> Built:
    return write_npz(
        folder / "p.npz",
        learning({"layer_0": np.arange(6, dtype=">f4"), "layer_1": np.arange(3, dtype=">i8")}),
    )


@case("ok_fortran_order", None, "a Fortran-order layer")
def _ok_fortran(folder: Path) -> Built:
    return write_npz(
        folder / "p.npz", learning({"layer_0": np.asfortranarray(np.arange(12.0).reshape(3, 4))})
    )


@case("ok_zero_d_layer", None, "a 0-d layer")
def _ok_0d(folder: Path) -> Built:
    return write_npz(folder / "p.npz", learning({"layer_0": np.array(2.5)}))


@case("ok_empty_layers", None, "size-0 layers of shapes (0,) and (3, 0)")
def _ok_empty(folder: Path) -> Built:
    return write_npz(
        folder / "p.npz",
        learning({"layer_0": np.zeros(0, dtype=np.float32), "layer_1": np.zeros((3, 0))}),
    )


@case("ok_float16_complex_bool", None, "float16, complex64, complex128, bool and uint8 layers")
def _ok_numeric(folder: Path) -> Built:
    layers: Members = {
        "layer_0": np.ones(4, dtype=np.float16),
        "layer_1": np.array([1 + 1j], dtype=np.complex64),
        "layer_2": np.array([2 - 1j]),
        "layer_3": np.array([True, False]),
        "layer_4": np.arange(4, dtype=np.uint8),
    }
    return write_npz(folder / "p.npz", learning(layers))


@case("ok_weighting_0d", None, "weighting of shape ()")
def _ok_w0(folder: Path) -> Built:
    return write_npz(folder / "p.npz", {"weighting": np.array(3.0), **small_layers()})


@case("ok_weighting_1x1", None, "weighting of shape (1, 1), integer")
def _ok_w11(folder: Path) -> Built:
    return write_npz(
        folder / "p.npz", {"weighting": np.array([[3]], dtype=np.int64), **small_layers()}
    )


@case("ok_weighting_big_endian", None, "a big-endian weighting")
def _ok_wbe(folder: Path) -> Built:
    return write_npz(
        folder / "p.npz", {"weighting": np.array([3.0], dtype=">f8"), **small_layers()}
    )


@case(
    "ok_sdk_save_weights",
    None,
    "the SDK's save_weights layout: weighting float64 (1,), layer_i, savez_compressed",
)
def _ok_sdk(folder: Path) -> Built:
    path = folder / "p.npz"
    arrays: dict[str, Any] = {"weighting": np.array([128], dtype=np.float64), **small_layers()}
    np.savez_compressed(path, **arrays)
    return path


@case("ok_savez_stored", None, "numpy.savez (stored) output")
def _ok_stored(folder: Path) -> Built:
    return _write(folder / "p.npz", valid_npz_bytes(compress=False))


@case(
    "ok_analytics_0d_kind", None, "analytics with a 0-d unicode kind key and numeric/string fields"
)
def _ok_analytics(folder: Path) -> Built:
    fields = {"count": np.array([3]), "labels": np.array(["cat", "dog"]), "raw": np.array([b"x"])}
    return write_npz(folder / "p.npz", analytics(fields))


@case(
    "ok_analytics_non_ascii_names",
    None,
    "analytics fields named 'température', '温度' and 'layer_norm'",
)
def _ok_non_ascii(folder: Path) -> Built:
    fields = {"température": np.array([21.5]), "温度": np.array([3]), "layer_norm": np.array([1.0])}
    return write_npz(folder / "p.npz", analytics(fields))


@case("ok_extra_key_lenient", None, "an extra numeric key is ignored when lenient", policy=LENIENT)
def _ok_extra(folder: Path) -> Built:
    return write_npz(folder / "p.npz", learning({**small_layers(), "epoch": np.array([3])}))


@case("extra_key_strict", "unexpected-key", "the same extra key under the strict key check")
def _extra_strict(folder: Path) -> Built:
    return _ok_extra(folder)


@case("ok_nan_layer_default", None, "a NaN layer passes header-only validation")
def _ok_nan(folder: Path) -> Built:
    return write_npz(folder / "p.npz", learning({"layer_0": np.array([1.0, np.nan, np.inf])}))


@case("deep_nan_layer", "not-finite", "the same NaN layer in deep mode", policy=DEEP)
def _deep_nan(folder: Path) -> Built:
    return _ok_nan(folder)


def _crc_broken(folder: Path) -> Path:
    # Larger than zipfile's 4 KiB read-ahead, so reading the header does not reach the CRC check.
    entries = entries_of(learning({"layer_0": np.arange(4096, dtype=np.float32)}))
    last = entries[-1]
    return _write(
        folder / "p.npz", raw_zip([*entries[:-1], Entry(last.name, last.payload, crc=0xDEADBEEF)])
    )


@case("ok_crc_broken_default", None, "a layer with a wrong CRC: its data is never read by default")
def _ok_crc(folder: Path) -> Built:
    return _crc_broken(folder)


@case("deep_crc_mismatch", "crc-mismatch", "the same wrong CRC in deep mode", policy=DEEP)
def _deep_crc(folder: Path) -> Built:
    return _crc_broken(folder)


@case(
    "weighting_crc_mismatch", "crc-mismatch", "a wrong CRC on weighting, which is always read whole"
)
def _weighting_crc(folder: Path) -> Built:
    entries = entries_of(learning(small_layers()))
    first = entries[0]
    return _write(
        folder / "p.npz", raw_zip([Entry(first.name, first.payload, crc=1), *entries[1:]])
    )


# ------------------------------------------------------------------ unicode and numbering


@case(
    "unicode_digit_layer_strict",
    "layer-numbering",
    "'layer_٣' (Arabic-Indic three) as a learning layer",
)
def _unicode_strict(folder: Path) -> Built:
    return write_npz(folder / "p.npz", learning({"layer_٣": np.zeros(2)}))


@case(
    "unicode_digit_layer_lenient",
    None,
    "'layer_٣' when lenient: the client's L3 only needs the prefix",
    policy=LENIENT,
)
def _unicode_lenient(folder: Path) -> Built:
    return _unicode_strict(folder)


@case(
    "unicode_digit_field",
    "reserved-field-name",
    "'layer_٣' as an analytics field: A2's \\d matches it",
)
def _unicode_field(folder: Path) -> Built:
    return write_npz(folder / "p.npz", analytics({"layer_٣": np.array([1.0])}))


@case(
    "unicode_fullwidth_field_lenient",
    "reserved-field-name",
    "'layer_\uff11' (full-width one) as a field, lenient",
    policy=LENIENT,
)
def _fullwidth_field(folder: Path) -> Built:
    return write_npz(folder / "p.npz", analytics({"layer_\uff11": np.array([1.0])}))


@case("layer_leading_zero", "layer-numbering", "'layer_00'")
def _leading_zero(folder: Path) -> Built:
    return write_npz(folder / "p.npz", learning({"layer_00": np.zeros(2)}))


@case("layer_gap", "layer-numbering", "layer_0 and layer_2, no layer_1")
def _gap(folder: Path) -> Built:
    return write_npz(folder / "p.npz", learning({"layer_0": np.zeros(2), "layer_2": np.zeros(2)}))


# ------------------------------------------------------------------ protocol rules


@case("kind_unknown", "unknown-kind", "an unknown payload kind")
def _kind_unknown(folder: Path) -> Built:
    return write_npz(
        folder / "p.npz", {KIND_KEY: np.array("federated_mining"), "count": np.array([1])}
    )


@case("kind_not_0d", "unknown-kind", "the kind as a 1-element array, not 0-d")
def _kind_1d(folder: Path) -> Built:
    return write_npz(
        folder / "p.npz", {KIND_KEY: np.array(["federated_analytics"]), "count": np.array([1])}
    )


@case(
    "kind_too_large",
    "too-large",
    "a kind key larger than the small-member limit",
    policy=ValidationPolicy(limits=Limits(max_small_member_bytes=64)),
)
def _kind_large(folder: Path) -> Built:
    return write_npz(
        folder / "p.npz",
        {KIND_KEY: np.array("federated_analytics" + " " * 100), "count": np.array([1])},
    )


@case("weighting_missing", "missing-weighting", "layers without weighting")
def _weighting_missing(folder: Path) -> Built:
    return write_npz(folder / "p.npz", small_layers())


@case("weighting_two_values", "weighting-not-single", "weighting of shape (2,)")
def _weighting_two(folder: Path) -> Built:
    return write_npz(folder / "p.npz", {"weighting": np.array([1.0, 2.0]), **small_layers()})


@case("weighting_nan", "bad-weighting", "a NaN weighting")
def _weighting_nan(folder: Path) -> Built:
    return write_npz(folder / "p.npz", learning(small_layers(), weighting=float("nan")))


@case("weighting_negative", "bad-weighting", "a negative weighting")
def _weighting_negative(folder: Path) -> Built:
    return write_npz(folder / "p.npz", learning(small_layers(), weighting=-5.0))


@case("weighting_string", "bad-weighting", "a string weighting")
def _weighting_text(folder: Path) -> Built:
    return write_npz(folder / "p.npz", {"weighting": np.array(["100"]), **small_layers()})


@case("no_layers", "no-layers", "weighting alone")
def _no_layers(folder: Path) -> Built:
    return write_npz(folder / "p.npz", {"weighting": weighting_npy()})


@case("analytics_no_fields", "no-fields", "an analytics payload with only its kind key")
def _no_fields(folder: Path) -> Built:
    return write_npz(folder / "p.npz", analytics({}))


@case("analytics_bare_scalar", "bare-scalar", "a 0-d analytics field")
def _bare_scalar(folder: Path) -> Built:
    return write_npz(folder / "p.npz", analytics({"count": np.array(3)}))


# ------------------------------------------------------------------ per-layer parts (layers_to_npz)


def _parts(folder: Path, last: bytes) -> tuple[Path, ...]:
    first = _write(folder / "part_0.npy", npy(np.arange(6, dtype=np.float32).reshape(2, 3)))
    return (first, _write(folder / "part_1.npy", last))


@case("parts_truncated", "truncated", "a part cut inside its data")
def _parts_truncated(folder: Path) -> Built:
    return _parts(folder, npy(np.zeros(16))[:-9])


@case("parts_cut_in_header", "truncated", "a part cut inside its header")
def _parts_cut_header(folder: Path) -> Built:
    return _parts(folder, npy(np.zeros(16))[:20])


@case("parts_overlong", "shape-mismatch", "a part with bytes after its data")
def _parts_long(folder: Path) -> Built:
    return _parts(folder, npy(np.zeros(16)) + b"\x00" * 8)


@case(
    "parts_object", "pickle-forbidden", "an object-dtype part holding an os.system trap", live=True
)
def _parts_object(folder: Path) -> Built:
    return _parts(folder, _object_npy(system_call(folder)))


@case("parts_structured", "not-numeric", "a structured part")
def _parts_structured(folder: Path) -> Built:
    return _parts(folder, npy(np.zeros(2, dtype=[("a", "<f4")])))


@case("parts_bad_header", "bad-npy-header", "a part whose header is not a dict")
def _parts_bad_header(folder: Path) -> Built:
    return _parts(folder, npy_header("('<f4', (1,))") + bytes(4))


@case("parts_weighting_word", "bad-weighting", "weighting 'ten'", weighting="ten")
def _parts_word(folder: Path) -> Built:
    return _parts(folder, npy(np.zeros(2)))


@case("parts_weighting_nan", "bad-weighting", "weighting 'nan'", weighting="nan")
def _parts_nan(folder: Path) -> Built:
    return _parts(folder, npy(np.zeros(2)))


@case("parts_weighting_negative", "bad-weighting", "weighting '-1'", weighting="-1")
def _parts_negative(folder: Path) -> Built:
    return _parts(folder, npy(np.zeros(2)))


@case(
    "parts_weighting_infinite",
    "bad-weighting",
    "weighting '1e999' (parses as inf)",
    weighting="1e999",
)
def _parts_inf(folder: Path) -> Built:
    return _parts(folder, npy(np.zeros(2)))


@case("parts_valid", None, "two plain parts and weighting '42'", weighting="42")
def _parts_valid(folder: Path) -> Built:
    return _parts(folder, npy(np.asfortranarray(np.ones((2, 2), dtype=">f8"))))
