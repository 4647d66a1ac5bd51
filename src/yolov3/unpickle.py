"""A restricted unpickler: checkpoints that hold objects of foreign classes, read without running code.

torch.load(weights_only=True) refuses a whole file for one object of a class it does not know,
e.g. a course's loss module (an nn.Module of its own code) in a Lightning checkpoint's
hyper-parameters. This reader admits what weights_only admits (tensors, containers, plain values)
and puts an inert *stand-in* (StandIn) in place of any other class or function, without importing
its module (it may not be importable at all). A file whose unpickling would *call* anything else
is refused (Refused / RefusedCall): a stand-in is never called.

Use: load_restricted(file) -> (object, names of the stand-ins). It runs torch.load(weights_only=False,
pickle_module=RestrictedPickle()); pickle_module is torch.load's public hook: torch subclasses our
Unpickler (its wrapper turns `*Storage` names into dtype records and sets persistent_load) and reads
the header pickles of its legacy format with our `load`.

Why nothing in a file can run code. The Unpickler is pickle's pure-Python one with every opcode that
calls something replaced (pickle._Unpickler.dispatch), so each call is one of these:
- GLOBAL, STACK_GLOBAL, INST, OBJ, EXT1/2/4 resolve names only through find_class, which imports
  nothing: it returns an object of a fixed table (_table, _numpy_table: torch's rebuild functions,
  dtypes, Size, device, layout; builtin and collections containers; numpy's scalar, dtype and
  array rebuilds; pathlib's path classes; copyreg._reconstructor, getattr) or a stand-in class made
  on the spot. EXT codes are looked up in copyreg's registry, never in pickle's process-wide cache
  of resolved objects.
- REDUCE, INST, OBJ call only the table's callables, each through a checking wrapper around library
  code that builds tensors, containers, numbers or pure paths from plain arguments (tensor rebuilds
  refuse backward hooks and dunder or hook attributes; _codecs.encode only latin-1, as protocol 2
  writes bytes; paths become PurePosixPath / PureWindowsPath, without file-system methods; getattr
  only on stand-ins, giving an inert StandInAttribute). A stand-in class, anything else: RefusedCall.
- NEWOBJ, NEWOBJ_EX (cls.__new__) only on stand-in classes: an inert instance recording args.
- BUILD (__setstate__) stores the state on stand-in instances; numpy arrays and dtypes get their own
  C __setstate__; an OrderedDict new attributes (a state_dict's _metadata); anything else is refused
  (pickle's fallback, setattr on any object, is gone).
- APPEND(S), SETITEM(S), ADDITEMS only on exact list / dict, OrderedDict, defaultdict, Counter / set,
  or a stand-in (stored in listitems / dictitems): never a file-chosen append or __setitem__.
- PERSID, BINPERSID: only ("storage", ...) ids (and the legacy format's int / str keys) reach torch's
  persistent_load (a TypedStorage from the file's own records); a legacy ("module", cls, ...) id
  gives cls without torch's source check (which may write a .patch file).
- Every other opcode builds builtin values; the only methods they run are __hash__/__eq__ of dict,
  set and frozenset keys, which for the objects above are library code (stand-ins: identity).
So every object in the result is a plain value, a container, a tensor or storage, a numpy value or
array, an admitted global or a stand-in; the callables among them run library code or refuse, so
later code that calls something it found in the checkpoint cannot run the file's code either.
TorchScript archives (torch.load would hand them to torch.jit.load) and the legacy tar format are
refused before torch.load. Not a goal: bounding memory (a file may ask for large allocations).
"""

from __future__ import annotations

import _compat_pickle
import collections
import copyreg
import functools
import importlib
import io
import pathlib
import pickle
import sys
import tarfile
import threading
from typing import Any, BinaryIO, Callable

import torch


class Refused(pickle.UnpicklingError):
    """The file must not be unpickled (the message says why)."""


class RefusedCall(Refused):
    """Unpickling would call `target` (a qualified name such as "posix.system"), which is not admitted."""

    def __init__(self, target: str, why: str = "") -> None:
        super().__init__(f"unpickling would call {target}" + (f" ({why})" if why else ""))
        self.target = target
        self.why = why


# ---------------------------------------------------------------- stand-ins


class _StandInMeta(type):
    """Metaclass of stand-in classes: calling one (what REDUCE / INST would do) is refused."""

    def __call__(cls, *args, **kwargs):
        raise RefusedCall(cls.qualname, "a stand-in for a class or function is never called")

    def __repr__(cls) -> str:
        return f"<stand-in class {cls.qualname}>"


class StandIn(metaclass=_StandInMeta):
    """An inert object in place of an instance of a class that was not imported.

    `qualname` is the replaced class's "module.QualName"; `args` / `kwargs` what the file passed to
    its __new__; `state` what it passed to __setstate__ (None if nothing; for an nn.Module the
    dict of its attributes, "_modules" holding the submodules as stand-ins); `listitems` /
    `dictitems` what it appended / set as items (list and dict subclasses). No other attribute:
    torch code that probes objects (e.g. `.dtype`) gets AttributeError. Not picklable again.
    """

    __slots__ = ("args", "kwargs", "state", "listitems", "dictitems")
    qualname = "?"  # each stand-in class sets its own

    def __repr__(self) -> str:
        return f"<stand-in {self.qualname}>"


class StandInAttribute:
    """getattr(stand-in, name) as unpickled (e.g. a bound method such as an old OneCycleLR's
    anneal_func): a record of the owner and the name; calling it is refused."""

    __slots__ = ("owner", "name")

    def __init__(self, owner: Any, name: str) -> None:
        self.owner, self.name = owner, name

    @property
    def qualname(self) -> str:
        return f"{self.owner.qualname}.{self.name}"

    def __call__(self, *args, **kwargs):
        raise RefusedCall(self.qualname, "an attribute of a stand-in is never called")

    def __repr__(self) -> str:
        return f"<stand-in attribute {self.qualname}>"


_classes: dict[str, type] = {}
_classes_lock = threading.Lock()


def stand_in_class(qualname: str) -> type:
    """The stand-in class for `qualname` ("module.Name"), one per name and process."""
    with _classes_lock:
        cls = _classes.get(qualname)
        if cls is None:
            short = qualname.rsplit(".", 1)[-1] or "StandIn"
            cls = _StandInMeta(short, (StandIn,), {"__slots__": (), "qualname": qualname, "__module__": __name__})
            _classes[qualname] = cls
        return cls


def _new_stand_in(cls: type, args: tuple = (), kwargs: dict | None = None) -> StandIn:
    obj = object.__new__(cls)
    obj.args, obj.kwargs, obj.state, obj.listitems, obj.dictitems = args, dict(kwargs or {}), None, [], {}
    return obj


def _is_stand_in_class(obj: Any) -> bool:
    return type(obj) is _StandInMeta and obj is not StandIn


def _describe(obj: Any) -> str:
    """A name for what a file tried to call or modify, for messages."""
    if _is_stand_in_class(obj) or type(obj) is StandInAttribute:
        return obj.qualname
    if isinstance(obj, StandIn):
        return f"an instance of {obj.qualname}"
    if callable(obj) and hasattr(obj, "__qualname__"):  # admitted globals
        return f"{getattr(obj, '__module__', None) or '?'}.{obj.__qualname__}"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}"


# ---------------------------------------------------------------- what is admitted

_LATIN1 = ("latin1", "latin-1")
_BUILTIN_CONTAINERS = (list, tuple, dict, set, frozenset)


def _check_storage(storage: Any, target: str) -> None:
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise Refused(f"{target}: the storage is a {_describe(storage)}, not a storage of the file")


def _check_hooks(hooks: Any, target: str) -> None:
    # torch always saves an empty OrderedDict here ("Don't serialize hooks"); anything else
    # would attach callables that a backward pass calls
    if type(hooks) not in (dict, collections.OrderedDict) or hooks:
        raise RefusedCall(target, "it would attach backward hooks to a tensor")


def _check_obj_state(state: Any, target: str) -> None:
    """A tensor's Python attributes (dict or (dict, slots dict)): plain names, no hooks, no dunders."""
    parts = state if type(state) is tuple and len(state) == 2 else (state,)
    for part in parts:
        if part is None:
            continue
        if type(part) is not dict:
            raise Refused(f"{target}: tensor attributes must be a dict, not {_describe(part)}")
        for key in part:
            # hooks (_backward_hooks, _post_accumulate_grad_hooks, ...) are called by autograd
            if type(key) is not str or key.startswith("__") or key.endswith("_hooks"):
                raise RefusedCall(target, f"it would set the tensor attribute {key!r}")


def _rebuild_tensor(storage, storage_offset, size, stride):
    _check_storage(storage, "torch._utils._rebuild_tensor")
    return torch._utils._rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, *metadata):
    _check_storage(storage, "torch._utils._rebuild_tensor_v2")
    _check_hooks(backward_hooks, "torch._utils._rebuild_tensor_v2")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                                           *metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *metadata):
    _check_storage(storage, "torch._utils._rebuild_tensor_v3")
    _check_hooks(backward_hooks, "torch._utils._rebuild_tensor_v3")
    return torch._utils._rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                                           dtype, *metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not isinstance(data, torch.Tensor):
        raise Refused(f"torch._utils._rebuild_parameter: the data is a {_describe(data)}, not a tensor")
    _check_hooks(backward_hooks, "torch._utils._rebuild_parameter")
    return torch._utils._rebuild_parameter(data, requires_grad, backward_hooks)


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    _check_obj_state(state, "torch._utils._rebuild_parameter_with_state")
    param = _rebuild_parameter(data, requires_grad, backward_hooks)
    return torch._utils._set_obj_state(param, state)


def _rebuild_from_type_v2(func, new_type, args, state):
    """torch._tensor._rebuild_from_type_v2 for plain tensors with Python attributes: `func` must be
    one of the rebuild functions above (called through its check), `new_type` torch.Tensor."""
    target = "torch._tensor._rebuild_from_type_v2"
    rebuild = _TENSOR_REBUILDS.get(id(func))
    if rebuild is None or rebuild[0] is not func:
        raise RefusedCall(_describe(func), f"through {target}")
    if new_type is not torch.Tensor:
        raise RefusedCall(_describe(new_type), f"a tensor subclass, through {target}")
    if type(args) is not tuple:
        raise Refused(f"{target}: the arguments are a {_describe(args)}, not a tuple")
    _check_obj_state(state, target)
    tensor = rebuild[1](*args)
    if type(tensor) is not torch.Tensor:
        raise Refused(f"{target}: rebuilt a {_describe(tensor)}, not a torch.Tensor")
    return torch._utils._set_obj_state(tensor, state)


_TENSOR_REBUILDS: dict[int, tuple[Any, Callable]] = {
    id(real): (real, impl)
    for real, impl in (
        (torch._utils._rebuild_tensor, _rebuild_tensor),
        (torch._utils._rebuild_tensor_v2, _rebuild_tensor_v2),
        (getattr(torch._utils, "_rebuild_tensor_v3", None), _rebuild_tensor_v3),
        (torch._utils._rebuild_parameter, _rebuild_parameter),
        (torch._utils._rebuild_parameter_with_state, _rebuild_parameter_with_state),
    )
    if real is not None
}


def _encode(obj, encoding="utf-8", errors="strict"):
    """_codecs.encode as protocol 2 writes bytes: (str, "latin1"). Other codecs are looked up by
    name (importing modules of the encodings package), so they are not admitted."""
    if type(obj) is not str or encoding not in _LATIN1 or errors != "strict":
        raise RefusedCall("_codecs.encode", f"only (str, 'latin1') is admitted, not encoding {encoding!r}")
    return obj.encode("latin-1")


def _byte_string(kind: type) -> Callable:
    def build(*args):
        # bytes(n) allocates n bytes and bytes(str, codec) looks a codec up by name: only copies
        if args and (len(args) > 1 or type(args[0]) not in (bytes, bytearray, list, tuple)):
            raise RefusedCall(f"builtins.{kind.__name__}", "only () or one bytes-like argument is admitted")
        return kind(*args)

    return build


def _container(kind: type, max_args: int = 1) -> Callable:
    def build(*args):
        # iterating a builtin container runs no code of the file's objects
        if len(args) > max_args or any(type(a) not in _BUILTIN_CONTAINERS for a in args[:1]):
            raise RefusedCall(f"{kind.__module__}.{kind.__qualname__}",
                              "only builtin containers are admitted as its argument")
        return kind(*args)

    return build


def _defaultdict(*args):
    if len(args) > 1:
        raise RefusedCall("collections.defaultdict", "only a default factory is admitted as its argument")
    factory = args[0] if args else None
    # the factory is called for a missing key: an admitted type, or a stand-in (whose call is refused)
    if factory is not None and not any(factory is f for f in _FACTORIES) and not _is_stand_in_class(factory):
        raise RefusedCall("collections.defaultdict", f"its default factory would be {_describe(factory)}")
    return collections.defaultdict(factory)


_FACTORIES = (dict, list, set, frozenset, tuple, int, float, str, bytes, bool,
              collections.OrderedDict, collections.Counter, collections.defaultdict)


def _complex(*args):
    if len(args) > 2 or any(type(a) not in (int, float) for a in args):
        raise RefusedCall("builtins.complex", "only numbers are admitted as its arguments")
    return complex(*args)


def _slice(*args):
    if not 1 <= len(args) <= 3:
        raise RefusedCall("builtins.slice", "only start, stop, step are admitted")
    return slice(*args)  # holds its arguments, calls nothing


def _device(*args):
    if not 1 <= len(args) <= 2 or any(type(a) not in (str, int) for a in args):
        raise RefusedCall("torch.device", "only a device name and index are admitted")
    return torch.device(*args)


def _pure_path(kind: type) -> Callable:
    def build(*parts):
        # a concrete Path would work as well, but a pure one cannot touch the file system
        if any(type(part) is not str for part in parts):
            raise RefusedCall("pathlib." + kind.__name__, "only str parts are admitted")
        return kind(*parts)

    return build


def _get_layout(name):
    if type(name) is not str:
        raise RefusedCall("torch.serialization._get_layout", "only a layout name is admitted")
    return torch.serialization._get_layout(name)


def _getattr(obj, name, *default):
    # an unpickled bound method is getattr(owner, name): fine on a stand-in (the answer is a
    # record, nothing is looked up); on a real object it would reach its methods
    if default or type(name) is not str:
        raise RefusedCall("builtins.getattr", "only getattr(stand-in, name) is admitted")
    if not (_is_stand_in_class(obj) or isinstance(obj, StandIn) or type(obj) is StandInAttribute):
        raise RefusedCall("builtins.getattr", f"on {_describe(obj)}: only on stand-ins")
    return StandInAttribute(obj, name)


def _reconstructor(cls, base, state):
    """copyreg._reconstructor (protocols 0 and 1 write objects this way): a stand-in instance."""
    if not _is_stand_in_class(cls):
        raise RefusedCall(_describe(cls), "through copyreg._reconstructor")
    if base is not object and base not in _BUILTIN_CONTAINERS:
        raise RefusedCall(_describe(base), "as the base of copyreg._reconstructor")
    return _new_stand_in(cls, () if state is None else (state,))


def _numpy_parts() -> tuple[Any, Any] | None:
    """(numpy, its multiarray module), imported on first use; None without numpy."""
    try:
        numpy = importlib.import_module("numpy")
    except ImportError:
        return None
    for name in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2 / numpy 1
        try:
            return numpy, importlib.import_module(name)
        except ImportError:
            continue
    return None


@functools.lru_cache(maxsize=1)
def _numpy_table() -> tuple[dict[tuple[str, str], Any], dict[int, tuple[Any, Callable]]]:
    parts = _numpy_parts()
    if parts is None:
        return {}, {}
    numpy, multiarray = parts

    def scalar(dtype, *obj):
        if not isinstance(dtype, numpy.dtype) or len(obj) > 1:
            raise RefusedCall("numpy.core.multiarray.scalar", "only (dtype, data) is admitted")
        return multiarray.scalar(dtype, *obj)

    def reconstruct(subtype, shape, dtype):
        if subtype is not numpy.ndarray:
            raise RefusedCall(_describe(subtype), "an ndarray subclass, through numpy's _reconstruct")
        return multiarray._reconstruct(subtype, shape, dtype)

    def dtype(obj, *flags):
        if type(obj) not in (str, list, tuple, dict) or len(flags) > 2 or any(type(f) is not bool for f in flags):
            raise RefusedCall("numpy.dtype", "only a dtype description is admitted")
        return numpy.dtype(obj, *flags)

    values = {("numpy", "dtype"): numpy.dtype, ("numpy", "ndarray"): numpy.ndarray}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        values[(module, "scalar")] = multiarray.scalar
        values[(module, "_reconstruct")] = multiarray._reconstruct
    calls = {id(real): (real, impl) for real, impl in ((multiarray.scalar, scalar),
                                                       (multiarray._reconstruct, reconstruct),
                                                       (numpy.dtype, dtype))}
    return values, calls


@functools.lru_cache(maxsize=1)
def _table() -> tuple[dict[tuple[str, str], Any], dict[int, tuple[Any, Callable]]]:
    """(module, name) -> the real object find_class returns; id(real object) -> (it, what REDUCE calls)."""
    import _codecs

    od, Counter = collections.OrderedDict, collections.Counter
    callables = [  # (module, name, real object, the checking implementation)
        ("torch._utils", "_rebuild_tensor", *_TENSOR_REBUILDS[id(torch._utils._rebuild_tensor)]),
        ("torch._utils", "_rebuild_tensor_v2", *_TENSOR_REBUILDS[id(torch._utils._rebuild_tensor_v2)]),
        ("torch._utils", "_rebuild_parameter", *_TENSOR_REBUILDS[id(torch._utils._rebuild_parameter)]),
        ("torch._utils", "_rebuild_parameter_with_state",
         *_TENSOR_REBUILDS[id(torch._utils._rebuild_parameter_with_state)]),
        ("torch._tensor", "_rebuild_from_type_v2", torch._tensor._rebuild_from_type_v2, _rebuild_from_type_v2),
        ("torch.tensor", "_rebuild_from_type_v2", torch._tensor._rebuild_from_type_v2, _rebuild_from_type_v2),
        ("torch", "Size", torch.Size, _container(torch.Size)),
        ("torch", "device", torch.device, _device),
        ("torch.serialization", "_get_layout", torch.serialization._get_layout, _get_layout),
        ("collections", "OrderedDict", od, _container(od)),
        ("collections", "Counter", Counter, _container(Counter)),
        ("collections", "defaultdict", collections.defaultdict, _defaultdict),
        ("copyreg", "_reconstructor", copyreg._reconstructor, _reconstructor),
        ("_codecs", "encode", _codecs.encode, _encode),
        ("builtins", "getattr", getattr, _getattr),
        ("builtins", "complex", complex, _complex),
        ("builtins", "slice", slice, _slice),
        ("builtins", "bytes", bytes, _byte_string(bytes)),
        ("builtins", "bytearray", bytearray, _byte_string(bytearray)),
        *[("builtins", kind.__name__, kind, _container(kind)) for kind in _BUILTIN_CONTAINERS],
    ]
    for module in ("pathlib", "pathlib._local"):  # Python 3.13 moved the classes into pathlib._local
        for name, pure in (("PurePath", pathlib.PurePosixPath), ("Path", pathlib.PurePosixPath),
                           ("PurePosixPath", pathlib.PurePosixPath), ("PosixPath", pathlib.PurePosixPath),
                           ("PureWindowsPath", pathlib.PureWindowsPath), ("WindowsPath", pathlib.PureWindowsPath)):
            callables.append((module, name, getattr(pathlib, name), _pure_path(pure)))
    if hasattr(torch._utils, "_rebuild_tensor_v3"):
        callables.append(("torch._utils", "_rebuild_tensor_v3",
                          *_TENSOR_REBUILDS[id(torch._utils._rebuild_tensor_v3)]))
    values: dict[tuple[str, str], Any] = {(m, n): real for m, n, real, _ in callables}
    calls = {id(real): (real, impl) for _, _, real, impl in callables}
    # values only (never called): dtypes and classes that appear as arguments, builtin types that
    # appear as defaultdict factories or copyreg bases
    values.update({("torch", name): v for name, v in vars(torch).items() if isinstance(v, torch.dtype)})
    values.update({("torch", "Tensor"): torch.Tensor, ("torch", "UntypedStorage"): torch.UntypedStorage,
                   ("torch.nn.parameter", "Parameter"): torch.nn.Parameter})
    values.update({("builtins", k.__name__): k for k in (int, float, str, bool, object)})
    values[("builtins", "Ellipsis")] = Ellipsis
    return values, calls


_MISSING = object()


# ---------------------------------------------------------------- the unpickler


class Unpickler(pickle._Unpickler):
    """pickle's pure-Python Unpickler with the policy of this module (see its docstring).

    `stand_ins` (a set, shared by the unpicklers of one load) collects the qualified names that
    were replaced by stand-ins.
    """

    dispatch = dict(pickle._Unpickler.dispatch)
    stand_ins: set[str]

    def __init__(self, file, **kwargs) -> None:
        super().__init__(file, **kwargs)
        if not hasattr(self, "stand_ins"):
            self.stand_ins = set()

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:  # Python 2's names, as protocol 2 writes them (pickle's mapping)
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        values = _table()[0]
        obj = values.get((module, name), _MISSING)
        if obj is _MISSING and module.split(".")[0] == "numpy":
            obj = _numpy_table()[0].get((module, name), _MISSING)
        if obj is not _MISSING:
            return obj
        qualname = f"{module}.{name}"
        self.stand_ins.add(qualname)
        return stand_in_class(qualname)

    def _call(self, func: Any, args: Any) -> Any:
        """What REDUCE, INST and OBJ do: func(*args), for admitted callables only."""
        entry = _table()[1].get(id(func))
        if entry is None and "numpy" in sys.modules:
            entry = _numpy_table()[1].get(id(func))
        if entry is None or entry[0] is not func:  # identity, not ==: ids of dead objects are reused
            raise RefusedCall(_describe(func))
        if type(args) is not tuple:
            raise Refused(f"the arguments for {_describe(func)} are a {_describe(args)}, not a tuple")
        return entry[1](*args)

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def _instantiate(self, klass: Any, args: list) -> None:
        # INST / OBJ: pickle calls klass(*args), or klass.__new__(klass) when there are no args
        if not args and _is_stand_in_class(klass):
            self.append(_new_stand_in(klass))
        else:
            self.append(self._call(klass, tuple(args)))

    def _new(self, cls: Any, args: Any, kwargs: Any) -> None:
        if not _is_stand_in_class(cls):
            raise RefusedCall(f"{_describe(cls)}.__new__", "only stand-ins are created with __new__")
        if type(args) is not tuple or type(kwargs) is not dict:
            raise Refused(f"the arguments for {cls.qualname}.__new__ are not a tuple and a dict")
        self.append(_new_stand_in(cls, args, kwargs))

    def load_newobj(self) -> None:
        args = self.stack.pop()
        self._new(self.stack.pop(), args, {})

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        self._new(self.stack.pop(), args, kwargs)

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, StandIn):
            inst.state = state
            return
        if type(inst) is collections.OrderedDict and type(state) is dict:
            # OrderedDict's reduce carries its instance __dict__, e.g. a state_dict's "_metadata":
            # plain new attribute names only, so no method or special name is shadowed
            for key in state:
                if type(key) is not str or key.startswith("__") or hasattr(collections.OrderedDict, key):
                    raise RefusedCall("collections.OrderedDict.__setstate__", f"it would set the attribute {key!r}")
            inst.__dict__.update(state)
            return
        numpy_values = _numpy_table()[0] if "numpy" in sys.modules else {}  # no numpy, no numpy values
        ndarray, dtype = numpy_values.get(("numpy", "ndarray")), numpy_values.get(("numpy", "dtype"))
        if (ndarray is not None and type(inst) is ndarray) or (dtype is not None and isinstance(inst, dtype)):
            inst.__setstate__(state)  # numpy's own (C) code, on plain data
            return
        raise RefusedCall(f"{_describe(type(inst))}.__setstate__", "only stand-ins and numpy values get a state")

    def _target(self, kinds: tuple[type, ...], method: str) -> Any:
        target = self.stack[-1]
        if type(target) in kinds or isinstance(target, StandIn):
            return target
        raise RefusedCall(f"{_describe(type(target))}.{method}", "items are added only to builtin containers")

    def load_append(self) -> None:
        value = self.stack.pop()
        target = self._target((list,), "append")
        (target.listitems if isinstance(target, StandIn) else target).append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        target = self._target((list,), "extend")
        (target.listitems if isinstance(target, StandIn) else target).extend(items)

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self._target((set,), "add")
        if isinstance(target, StandIn):
            target.listitems.extend(items)
        else:
            target.update(items)

    _MAPPINGS = (dict, collections.OrderedDict, collections.defaultdict, collections.Counter)

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        target = self._target(self._MAPPINGS, "__setitem__")
        (target.dictitems if isinstance(target, StandIn) else target)[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target(self._MAPPINGS, "__setitem__")
        mapping = target.dictitems if isinstance(target, StandIn) else target
        for i in range(0, len(items), 2):
            mapping[items[i]] = items[i + 1]

    def _persistent(self, pid: Any) -> Any:
        if type(pid) is tuple and pid:
            tag = pid[0].decode("ascii", "replace") if type(pid[0]) is bytes else pid[0]
            if type(tag) is str and tag == "storage":
                return self.persistent_load(pid)
            if type(tag) is str and tag == "module" and len(pid) >= 2:
                return pid[1]  # legacy whole-module saves; torch would compare (and maybe patch) sources
            raise Refused(f"unsupported persistent id {_describe(tag)}")
        if type(pid) in (int, str):
            return self.persistent_load(pid)
        raise Refused(f"unsupported persistent id {_describe(pid)}")

    def load_persid(self) -> None:
        try:
            pid = self.readline()[:-1].decode("ascii")
        except UnicodeDecodeError:
            raise pickle.UnpicklingError("persistent IDs in protocol 0 must be ASCII strings") from None
        self.append(self._persistent(pid))

    def load_binpersid(self) -> None:
        self.append(self._persistent(self.stack.pop()))

    def get_extension(self, code: int) -> None:
        # pickle's _extension_cache is process-wide (the C unpickler shares it): it may hold real
        # objects another unpickler resolved, and must not learn our stand-ins
        key = copyreg._inverted_registry.get(code)
        if not key:
            raise pickle.UnpicklingError(f"unregistered extension code {code}")
        self.append(self.find_class(*key))

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.ADDITEMS[0]] = load_additems
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.PERSID[0]] = load_persid
    dispatch[pickle.BINPERSID[0]] = load_binpersid


class RestrictedPickle:
    """A pickle-module-like object for torch.load(pickle_module=...): `Unpickler` (bound to this
    object's `stand_ins` set) and `load`. One per load, so the names of one file are collected."""

    def __init__(self) -> None:
        self.__name__ = __name__  # torch.load reads pickle_module.__name__ (its dill check)
        self.stand_ins: set[str] = set()
        self.Unpickler = type("Unpickler", (Unpickler,), {"stand_ins": self.stand_ins, "__module__": __name__})

    def load(self, file, **kwargs) -> Any:
        return self.Unpickler(file, **kwargs).load()

    def loads(self, data: bytes, **kwargs) -> Any:
        return self.load(io.BytesIO(data), **kwargs)


def _refuse_other_formats(file: BinaryIO) -> None:
    """torch.load hands TorchScript archives to torch.jit.load and reads the legacy tar format with
    its own source checks: neither is a checkpoint this module reads. (torch's own zip reader
    decides, as torch.load will; should these private helpers go, the AttributeError refuses.)"""
    serialization = torch.serialization
    start = file.tell()
    try:
        if serialization._is_zipfile(file):
            file.seek(start)
            with serialization._open_zipfile_reader(file) as archive:
                if serialization._is_torchscript_zip(archive):
                    raise Refused("a TorchScript archive: torch.load would run it with torch.jit.load")
        else:
            file.seek(start)
            if tarfile.is_tarfile(file):
                raise Refused("a checkpoint in torch's legacy tar format, which this reader does not read")
    finally:
        file.seek(start)


def load_restricted(file: BinaryIO, map_location: Any = "cpu") -> tuple[Any, tuple[str, ...]]:
    """Unpickle a torch.save file (zip or legacy format) with the policy of this module.

    `file` is a binary file opened for reading, at the start of the checkpoint. Returns the object
    and the sorted qualified names that were replaced by stand-ins. Raises RefusedCall (a call
    that is not admitted: its `target`), Refused (another refused content or format), and
    whatever torch.load raises for an unreadable file (pickle.UnpicklingError, RuntimeError,
    EOFError, ...).
    """
    _refuse_other_formats(file)
    module = RestrictedPickle()
    obj = torch.load(file, map_location=map_location, weights_only=False, mmap=False, pickle_module=module)
    return obj, tuple(sorted(module.stand_ins))
