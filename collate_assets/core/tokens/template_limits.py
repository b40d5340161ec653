"""Bounds on chat-template rendering: time and size, per conversation, whatever the caller passes.

A chat template is untrusted code. transformers renders it in Jinja's ImmutableSandboxedEnvironment,
which stops it from reaching Python internals but not from looping for hours
(`{% for i in range(100000) %}{% for j in range(100000) %}…`) or from building a gigabyte string
(`{{ 'x' * 10**9 }}`). `install()` makes transformers build every template's environment from
`BoundedSandbox`, a subclass of that sandbox, so the bounds hold for any `apply_chat_template` call
(one conversation or a batch, with tools=, add_generation_prompt=, …):

- time: each render of one conversation (and each compilation) runs under a watchdog thread; past
  `RenderLimits.seconds` the watchdog raises `TemplateLimitError` in the rendering thread (an
  asynchronous exception, delivered between two Python bytecodes, so within milliseconds: Jinja
  loops are Python code).
- size: nothing a template makes may exceed `RenderLimits.max_chars` characters (or items): the
  rendered output, `~` concatenations, `+`, `*`, `**` and `%` (Jinja's intercepted operators, checked
  before they compute), the arguments and results of every call and filter (for a string's
  `replace`, `join` and `expandtabs`, whose result can be the square of the limit, the size is
  worked out before they run), integer arguments (`'x'.ljust(10**12)`, `' '|indent(10**12)`),
  format widths, and values stored in a `namespace` (the only state a loop can carry). So no
  single step allocates more than a few times the limit.
- dunders reached dynamically (`x|attr('_'*2 ~ 'class' ~ '_'*2)`, `x['__cl' ~ 'ass__']`) raise a
  SecurityError like the static ones instead of rendering as empty.

An over-limit render raises `TemplateLimitError` from `apply_chat_template` (a batch call fails; the
engine then renders one by one and rejects the one conversation with its reason). Limits are looked
up by template text, so tokenizers loaded with different limits keep their own; templates compiled
by anyone else in the process get `DEFAULT_LIMITS`.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import threading
import time
import weakref
from time import monotonic as _monotonic

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, optimizeconst
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..settings import DEFAULT_RENDER_MAX_CHARS, RenderLimits

# Attributes no chat template has a use for: the ways out of a Jinja sandbox go through these.
_FORBIDDEN_ATTRIBUTES = frozenset(
    {"mro", "func_globals", "func_code", "gi_frame", "gi_code", "cr_frame", "cr_code", "ag_frame",
     "ag_code", "tb_frame", "tb_next", "f_globals", "f_locals", "f_builtins", "f_back", "co_code"}
)


def forbidden_attribute(attribute: object) -> bool:
    if not isinstance(attribute, str):
        return False
    # Dunders, and name-mangled privates such as `_TemplateReference__context`. A single leading
    # underscore alone is allowed: `message._meta` may be a plain dict key.
    return attribute.startswith("__") or (attribute.startswith("_") and "__" in attribute) or (
        attribute in _FORBIDDEN_ATTRIBUTES
    )


DEFAULT_LIMITS = RenderLimits()
_LIMITS_BY_TEMPLATE: dict[str, RenderLimits] = {}
# The compiled environments of each template text, to update their size limit (see set_limits).
_ENVIRONMENTS: dict[str, "weakref.WeakSet"] = {}


class TemplateLimitError(TemplateError):
    """A render went over its time or size limit (the conversation is rejected with this reason)."""


class _Timeout(BaseException):
    """Raised asynchronously in a rendering thread by the watchdog; turned into TemplateLimitError.

    A BaseException, so a template's or library's `except Exception` cannot swallow it.
    """


def set_limits(template: str, limits: RenderLimits) -> None:
    """Render `template` (the chat template's text) under `limits` from now on."""
    _LIMITS_BY_TEMPLATE[template] = limits
    for env in list(_ENVIRONMENTS.get(template, ())):
        if env._source == template:  # (an environment reused for another text keeps that one's limits)
            env._use_limits(limits)


def limits_for(template: str | None) -> RenderLimits:
    return _LIMITS_BY_TEMPLATE.get(template, DEFAULT_LIMITS) if template is not None else DEFAULT_LIMITS


# -- the watchdog ----------------------------------------------------------------------------------

def _set_async_exc(thread: int, exc: type[BaseException] | None) -> None:
    """Raise `exc` in `thread` at its next bytecode (None: cancel one not delivered yet)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread), ctypes.py_object(exc) if exc is not None else None
    )


class _Oversize(_Timeout):
    """Raised asynchronously when a render's output so far is over the size limit."""


class _Slot:
    """One thread's render in progress: its deadline (0.0: none), its output so far, whether the
    watchdog fired."""

    __slots__ = ("thread", "deadline", "seconds", "fired", "depth", "parts", "counted", "total", "cap")

    def __init__(self, thread: int):
        self.thread = thread
        self.deadline = 0.0
        self.seconds = 0.0
        self.fired = False
        self.depth = 0
        self.parts: list | None = None  # the pieces a render has yielded so far
        self.counted = 0
        self.total = 0
        self.cap = 0


# The watchdog fires, and a render ends, only while holding this lock: so a timeout is never raised
# in a thread that has finished its render (a late one is cancelled before the lock is released).
_FIRE_LOCK = threading.Lock()
_SLOTS: list[_Slot] = []
_LOCAL = threading.local()
_WATCHDOG_TICK = 0.02
_watchdog: threading.Thread | None = None


def _after_fork_in_child() -> None:
    """A forked process (a worker of tokenize.py) has only the thread that forked: no watchdog, and
    the lock may have been held by one. Start afresh; the watchdog starts again at the first render."""
    global _FIRE_LOCK, _SLOTS, _LOCAL, _watchdog
    _FIRE_LOCK = threading.Lock()
    _SLOTS = []
    _LOCAL = threading.local()
    _watchdog = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _watch() -> None:
    while True:
        time.sleep(_WATCHDOG_TICK)
        now = time.monotonic()
        with _FIRE_LOCK:
            for slot in _SLOTS:
                # Read once: a render disarms its slot (deadline 0.0) without taking the lock.
                deadline = slot.deadline
                if not deadline or slot.fired:
                    continue
                if now >= deadline:
                    slot.fired = True
                    _set_async_exc(slot.thread, _Timeout)
                    continue
                parts = slot.parts
                if parts is not None:
                    # Pieces are only appended while a render runs: count the new ones.
                    n = len(parts)
                    slot.total += sum(map(len, parts[slot.counted : n]))
                    slot.counted = n
                    if slot.total > slot.cap:
                        slot.fired = True
                        _set_async_exc(slot.thread, _Oversize)


def _slot() -> _Slot:
    """This thread's slot (made, and the watchdog started, on first use)."""
    global _watchdog
    try:
        return _LOCAL.slot
    except AttributeError:
        pass
    slot = _LOCAL.slot = _Slot(threading.get_ident())
    with _FIRE_LOCK:
        _SLOTS[:] = [s for s in _SLOTS if s.thread in {t.ident for t in threading.enumerate()}]
        _SLOTS.append(slot)
        if _watchdog is None or not _watchdog.is_alive():
            _watchdog = threading.Thread(target=_watch, name="collate-template-watchdog", daemon=True)
            _watchdog.start()
    return slot


def _begin(seconds: float) -> _Slot:
    slot = _slot()
    if slot.depth == 0:
        slot.fired = False
        slot.seconds = seconds
        slot.deadline = time.monotonic() + seconds
    slot.depth += 1
    return slot


def _end(slot: _Slot) -> bool:
    """Close a render; True when the watchdog fired during it (its timeout cancelled if pending)."""
    slot.depth -= 1
    if slot.depth:
        return False
    with _FIRE_LOCK:
        slot.deadline = 0.0
        fired = slot.fired
        if fired:
            _set_async_exc(slot.thread, None)
    return fired


def _timeout_error(seconds: float) -> TemplateLimitError:
    return TemplateLimitError(
        f"chat template rendering took longer than {seconds:g} s (render time limit); stopped"
    )


class _Guard:
    """Time bound around a compilation (renders inline the same steps, for speed)."""

    __slots__ = ("seconds", "slot")

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self):
        self.slot = _begin(self.seconds)
        return self

    def __exit__(self, exc_type, exc, tb):
        slot = self.slot
        if exc_type is _Timeout:
            if slot.depth == 1:
                _end(slot)
                raise _timeout_error(slot.seconds) from None
            slot.depth -= 1
            return False
        _end(slot)
        return False


# -- size checks -----------------------------------------------------------------------------------

_SIZED = (str, bytes, list, tuple, dict)
_PERCENT_WIDTHS = re.compile(r"%[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_WIDTHS = re.compile(r"(\d{5,})")


def _size(value) -> int:
    """Characters or items; for a container also the characters of the strings it holds (one level)."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, (list, tuple, dict)):
        n = len(value)
        if n == 0 or n > DEFAULT_RENDER_MAX_CHARS:
            return n
        items = value.values() if isinstance(value, dict) else value
        return n + sum([len(v) for v in items if isinstance(v, str)])
    return 0


def _too_big(what: str, size: int, cap: int) -> TemplateLimitError:
    return TemplateLimitError(
        f"chat template {what} would make {size:,} characters or items > the render size limit {cap:,}; stopped"
    )


def _check_value(value, cap: int, what: str, ints: bool = False):
    """`value`, or TemplateLimitError when it is bigger than `cap` (integers only with `ints`)."""
    if isinstance(value, _SIZED):
        n = _size(value)
        if n > cap:
            raise _too_big(what, n, cap)
    elif ints and isinstance(value, int) and (value > cap or value < -cap):
        raise TemplateLimitError(
            f"chat template {what} got the integer {_short_int(value)} as a size, beyond the render size "
            f"limit {cap:,}; stopped"
        )
    return value


def _short_int(value: int) -> str:
    return str(value) if value.bit_length() < 200 else f"of {value.bit_length()} bits"


def _check_args(args, kwargs, cap: int, what: str, ints: bool = False) -> None:
    for a in args:
        _check_value(a, cap, what, ints)
    for a in kwargs.values():
        _check_value(a, cap, what, ints)


def _check_format_string(fmt, cap: int, what: str) -> None:
    if isinstance(fmt, str):
        for match in _FORMAT_WIDTHS.finditer(fmt):
            if int(match.group(1)) > cap:
                raise TemplateLimitError(f"chat template {what} asks for a width of {match.group(1)} characters; stopped")


_BUILTIN_METHOD = type("".strip)
_NO_NAMESPACE = object()  # (what `call` compares with before a BoundedNamespace class is made)
# str and dict methods whose result is never bigger than the string or dict they are called on.
_SMALL_METHODS = frozenset({
    "startswith", "endswith", "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "lower",
    "upper", "title", "capitalize", "casefold", "swapcase", "find", "rfind", "index", "rindex", "count",
    "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper", "istitle", "isnumeric",
    "isdecimal", "isidentifier", "partition", "rpartition", "removeprefix", "removesuffix", "get",
    "items", "keys", "values",
})
# str methods whose result can be far bigger than the string and the arguments together.
_GROWING_METHODS = frozenset({"replace", "join", "expandtabs"})


def _check_str_growth(s: str, name: str, args: tuple, kwargs: dict, cap: int) -> tuple:
    """Raise TemplateLimitError when `s.name(*args)` would make more than `cap` characters, without
    making it; returns the arguments to call it with (join's iterable read into a list, to size it)."""
    size = 0
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        growth = len(new) - len(old)
        if growth > 0 and len(s) + (len(s) + 1) * growth > cap:
            n = s.count(old) if old else len(s) + 1
            count = args[2] if len(args) > 2 else kwargs.get("count", -1)
            if isinstance(count, int) and 0 <= count < n:
                n = count
            size = len(s) + n * growth
    elif name == "join" and len(args) == 1:
        items = args[0]
        if not isinstance(items, (list, tuple)):
            items = list(items)
            args = (items,)
        try:
            size = len(s) * max(len(items) - 1, 0) + sum(map(len, items))
        except TypeError:  # not strings: join itself says so
            size = 0
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int) and tabsize > 1 and len(s) * tabsize > cap:
            size = len(s) + s.count("\t") * (tabsize - 1)
    if size > cap:
        raise _too_big(f"call {name!r}", size, cap)
    return args


# Filters whose result is never much bigger than their input (left unwrapped, for speed); the
# others have their arguments and result checked.
_SMALL_FILTERS = frozenset({
    "length", "count", "trim", "lower", "upper", "title", "capitalize", "first", "last", "int", "float",
    "abs", "default", "d", "list", "unique", "sort", "reverse", "selectattr", "rejectattr", "select",
    "reject", "map", "items", "dictsort", "round", "min", "max", "sum", "attr", "safe", "striptags",
    "groupby", "string", "e", "escape", "forceescape", "urlize", "wordcount", "random", "pprint",
})
# Filters whose integer arguments are sizes of what they make (widths, counts).
_SIZE_FILTERS = frozenset({"center", "indent", "wordwrap", "truncate", "batch", "slice", "format", "filesizeformat"})


def _wrap_filter(func, cap_of, name: str):
    """Filter `name` with its arguments and result held to the render size limit."""
    what = f"filter {name!r}"
    ints = name in _SIZE_FILTERS

    def bounded(*args, **kwargs):
        cap = cap_of()
        _check_args(args, kwargs, cap, what, ints)
        if name == "format" and args:
            _check_format_string(args[-1] if not isinstance(args[0], str) else args[0], cap, what)
        return _check_value(func(*args, **kwargs), cap, what)

    # Keep Jinja's pass_context / pass_eval_context / pass_environment marker.
    if hasattr(func, "jinja_pass_arg"):
        bounded.jinja_pass_arg = func.jinja_pass_arg
    bounded.__wrapped__ = func
    bounded.__name__ = getattr(func, "__name__", name)
    return bounded


def _assigned_names(template: nodes.Template) -> frozenset[str]:
    """Names a template assigns itself (set, block set, with, macro and call-block parameters).

    Only through these can a value grow from one step to the next (`{% set a = a + a %}` repeated);
    loop variables hold items of what is looped over, which is already bounded.
    """
    names = set()
    for node in template.find_all((nodes.Assign, nodes.AssignBlock, nodes.With, nodes.Macro, nodes.CallBlock)):
        if isinstance(node, (nodes.Assign, nodes.AssignBlock)):
            targets = [node.target]
        elif isinstance(node, nodes.With):
            targets = list(node.targets)
        else:
            targets = list(node.args)
        for target in targets:
            if isinstance(target, nodes.Name):
                names.add(target.name)
            names.update(n.name for n in target.find_all(nodes.Name))
    return frozenset(names)


class _BoundedCodeGenerator(CodeGenerator):
    """Checks the size of `a + b` and `a ~ b` where an operand can have grown in the template.

    `'<|im_start|>' + message['role']` (constants, loop variables, input data) compiles as plain
    Python; an operand naming a variable the template assigns goes through the size check.
    """

    _grown: frozenset[str] = frozenset()

    def visit_Template(self, node, frame=None):
        self._grown = _assigned_names(node)
        return super().visit_Template(node, frame)

    def _may_grow(self, node) -> bool:
        if not self._grown:
            return False
        if isinstance(node, nodes.Name) and node.name in self._grown:
            return True
        return any(n.name in self._grown for n in node.find_all(nodes.Name))

    # The checks are written inline (a walrus and len(), no Python call): `+` runs often in templates.
    _CHECK = (
        ")).__class__ is not str and _v.__class__ is not list or len(_v) <= environment.max_chars"
        " else environment.too_big(_v))"
    )

    def visit_Add(self, node, frame) -> None:
        self.write("(")
        if self._may_grow(node):
            self.write("_v if (_v := (")
        self.visit(node.left, frame)
        self.write(" + ")
        self.visit(node.right, frame)
        self.write(self._CHECK if self._may_grow(node) else ")")

    @optimizeconst
    def visit_Concat(self, node, frame) -> None:
        if frame.eval_ctx.volatile or frame.eval_ctx.autoescape or not self._may_grow(node):
            return super().visit_Concat.__wrapped__(self, node, frame)
        self.write("(_v if (_v := (str_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))" + self._CHECK)


class BoundedTemplate(jinja2.Template):
    """A template whose renders run under the watchdog with a bounded output."""

    def render(self, *args, **kwargs) -> str:
        # Written out inline (not with _begin/_end): this runs once per conversation. The pieces
        # are collected at C speed; the watchdog sums their sizes as they come (every tick), and
        # the whole is checked at the end, before it is joined.
        env = self.environment
        limits = env._limits
        try:
            slot = _LOCAL.slot
        except AttributeError:
            slot = _slot()
        nested = slot.depth
        parts = []
        if not nested:
            slot.fired = False
            slot.cap = limits.max_chars
            slot.counted = slot.total = 0
            slot.parts = parts
            slot.deadline = _monotonic() + limits.seconds  # last: this arms the watchdog
        slot.depth = nested + 1
        done = late = False
        try:
            parts.extend(self.root_render_func(self.new_context(dict(*args, **kwargs))))
            done = True
        except TemplateLimitError:
            raise
        except _Oversize:
            raise _too_big("output", slot.total, slot.cap) from None
        except _Timeout:
            raise _timeout_error(limits.seconds) from None
        except Exception:
            env.handle_exception()
        finally:
            slot.depth = nested
            if not nested:
                slot.deadline = 0.0  # disarms the watchdog: a check that starts after this skips the slot
                slot.parts = None
                # The watchdog fires only while holding _FIRE_LOCK. Not holding it now and not
                # fired: any check that read the deadline before it was disarmed is over and did
                # not fire, so no timeout can reach this thread any more (the common case, no
                # lock taken). Otherwise settle it under the lock: cancel one not yet delivered.
                if slot.fired or _FIRE_LOCK.locked():
                    with _FIRE_LOCK:
                        fired = slot.fired
                        if fired:
                            _set_async_exc(slot.thread, None)  # cancel it if not delivered yet
                    late = fired and done
        total = sum(map(len, parts))
        if total > limits.max_chars:
            raise _too_big("output", total, limits.max_chars)
        if late:  # fired as the render ended: over time (the size was checked just above)
            raise _timeout_error(limits.seconds)
        return "".join(parts)

    def generate(self, *args, **kwargs):
        limits = self.environment.limits
        cap = limits.max_chars
        ctx = self.new_context(dict(*args, **kwargs))
        total = 0
        gen = self.root_render_func(ctx)
        while True:
            # The time bound covers making each piece, not the caller's work between pieces.
            slot = _begin(limits.seconds)
            try:
                try:
                    piece = next(gen)
                finally:
                    _end_or_raise(slot)
            except StopIteration:
                return
            except TemplateLimitError:
                raise
            except _Timeout:
                raise _timeout_error(slot.seconds) from None
            except Exception:
                yield self.environment.handle_exception()
                return
            total += len(piece)
            if total > cap:
                raise _too_big("output", total, cap)
            yield piece


def _end_or_raise(slot: _Slot) -> None:
    """`_end`, raising the timeout when the watchdog fired but its exception was not delivered."""
    if _end(slot) and slot.depth == 0 and sys.exc_info()[0] is None:
        raise _Timeout


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """transformers' sandbox with time and size bounds (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    template_class = BoundedTemplate
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._source: str | None = None
        # The limits of `_source` (kept up to date by set_limits), so that no check looks them up.
        self._limits = DEFAULT_LIMITS
        self.max_chars = DEFAULT_LIMITS.max_chars  # read by the compiled size checks and every bound
        self._namespace = _NO_NAMESPACE  # the bounded `namespace` class (see _bound_callables)
        self.concat = self._bounded_concat  # block sets, macros, `~` go through here or _bounded_str_join

    @property
    def limits(self) -> RenderLimits:
        return self._limits

    def _use_limits(self, limits: RenderLimits) -> None:
        self._limits = limits
        self.max_chars = limits.max_chars

    def _cap(self) -> int:
        return self.max_chars

    def bounded_str_join(self, pieces) -> str:
        out = "".join([str(x) for x in pieces])
        cap = self._cap()
        if len(out) > cap:
            raise _too_big("'~'", len(out), cap)
        return out

    def _bounded_concat(self, pieces) -> str:
        out = "".join(pieces)
        cap = self._cap()
        if len(out) > cap:
            raise _too_big("text block", len(out), cap)
        return out

    def too_big(self, value):
        """Raise for a value over the size limit (called from the compiled checks)."""
        raise _too_big("'+' or '~'", _size(value), self.max_chars)

    def from_string(self, source, globals=None, template_class=None):
        if isinstance(source, str):
            self._source = source
            self._use_limits(limits_for(source))
            _ENVIRONMENTS.setdefault(source, weakref.WeakSet()).add(self)
        self._bound_callables()
        with _Guard(self.limits.seconds):  # constant folding at compile time runs template code too
            return super().from_string(source, globals, template_class)

    def _bound_callables(self) -> None:
        if getattr(self, "_bounded", False):
            return
        self._bounded = True
        for name, func in list(self.filters.items()):
            if name not in _SMALL_FILTERS:
                self.filters[name] = _wrap_filter(func, self._cap, name)
        namespace = self.globals.get("namespace")
        if isinstance(namespace, type) and issubclass(namespace, jinja2.utils.Namespace):
            env = self
            parent_setitem = namespace.__setitem__

            class BoundedNamespace(namespace):
                def __setitem__(self, name, value):
                    # Strings and flags are what templates store (inline, for speed); the rest is sized.
                    kind = type(value)
                    if kind is str:
                        if len(value) > env.max_chars:
                            raise _too_big(f"namespace value {name!r}", len(value), env.max_chars)
                    elif kind is not bool and kind is not int:
                        _check_value(value, env.max_chars, f"namespace value {name!r}")
                    parent_setitem(self, name, value)

            self.globals["namespace"] = BoundedNamespace
            self._namespace = BoundedNamespace

    # Every call a template makes (globals, methods, macros) comes through here in a sandbox.
    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
        if __obj.__class__ is _BUILTIN_METHOD and __obj.__name__ in _SMALL_METHODS:
            owner = __obj.__self__.__class__
            if owner is str or owner is dict:
                # Safe builtins whose result is no bigger than their input: the common case, fast.
                # (What Context.call does for them: drop Jinja's private keywords, then call.)
                if kwargs:
                    kwargs.pop("_loop_vars", None)
                    kwargs.pop("_block_vars", None)
                return __obj(*args, **kwargs)
        elif __obj is __self._namespace:
            # `namespace(...)`, once per render in many templates: its values are checked here and on
            # every later store (BoundedNamespace); the class is ours and takes no context, so what
            # the sandbox and Context.call do for it reduces to dropping Jinja's private keywords.
            cap = __self.max_chars
            if kwargs:
                kwargs.pop("_loop_vars", None)
                kwargs.pop("_block_vars", None)
                for a in kwargs.values():
                    if a.__class__ is str:
                        if len(a) > cap:
                            raise _too_big("call", len(a), cap)
                    elif a.__class__ is not bool:
                        _check_value(a, cap, "call")
            for a in args:
                _check_value(a, cap, "call")
            try:
                return __obj(*args, **kwargs)
            except StopIteration:
                return __self.undefined("value was undefined because a callable raised a StopIteration exception")
        cap = __self.max_chars
        # Integer arguments of str/list methods are sizes ('x'.ljust(10**12), .center, .zfill...).
        receiver = getattr(__obj, "__self__", None)
        ints = isinstance(receiver, _SIZED)
        if receiver.__class__ is str and __obj.__class__ is _BUILTIN_METHOD and __obj.__name__ in _GROWING_METHODS:
            # Their result can be the square of the limit: sized before they run, not after.
            args = _check_str_growth(receiver, __obj.__name__, args, kwargs, cap)
        original = getattr(__obj, "__wrapped__", None)  # the sandbox wraps str.format / format_map
        if original is not None and getattr(original, "__name__", None) in ("format", "format_map"):
            _check_format_string(getattr(original, "__self__", None), cap, "format")
        for a in args:
            if a.__class__ is str:
                if len(a) > cap:
                    raise _too_big("call", len(a), cap)
            elif a.__class__ is not bool:
                _check_value(a, cap, "call", ints)
        if kwargs:
            for key, a in kwargs.items():
                # (Jinja's own _loop_vars / _block_vars are the template's variables, not arguments.)
                if key != "_loop_vars" and key != "_block_vars":
                    _check_value(a, cap, "call", ints)
        result = super().call(__context, __obj, *args, **kwargs)
        if result.__class__ is str:
            if len(result) > cap:
                raise _too_big("call", len(result), cap)
            return result
        return _check_value(result, cap, "call")

    def call_binop(self, context, operator, left, right):
        cap = self.max_chars
        if operator == "+":
            # Both operands are within the limit (everything the template makes is checked), so
            # the sum is at most twice it: check after.
            result = left + right
            if result.__class__ is str:
                if len(result) > cap:
                    raise _too_big("'+'", len(result), cap)
                return result
            return _check_value(result, cap, "'+'")
        if operator == "*":
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(seq, _SIZED) and isinstance(n, int) and n > 0 and _size(seq) * n > cap:
                raise _too_big("'*'", _size(seq) * n, cap)
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, (int, float)) and abs(left) > 1 and right > 0:
                bits = abs(left).bit_length() * right
                if bits > 64 * cap:
                    raise TemplateLimitError(f"chat template '**' would make a number of about {int(bits):,} bits; stopped")
        elif operator == "%" and isinstance(left, str):
            for match in _PERCENT_WIDTHS.finditer(left):
                for width in match.groups():
                    if width and width != "*" and int(width) > cap:
                        raise TemplateLimitError(f"chat template '%' asks for a width of {width} characters; stopped")
            if "*" in left:
                values = right if isinstance(right, tuple) else (right,)
                for v in values:
                    _check_value(v, cap, "'%'", True)
        result = super().call_binop(context, operator, left, right)
        return _check_value(result, cap, f"{operator!r}") if isinstance(result, _SIZED) else result

    def unsafe_undefined(self, obj, attribute):
        if forbidden_attribute(attribute):
            raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")
        return super().unsafe_undefined(obj, attribute)


_installed = False


def install() -> None:
    """Make transformers compile every chat template in a BoundedSandbox (idempotent)."""
    global _installed
    if _installed:
        return
    from transformers.utils import chat_template_utils as ctu

    if getattr(ctu, "ImmutableSandboxedEnvironment", None) is not ImmutableSandboxedEnvironment:
        raise RuntimeError(
            "transformers no longer builds its chat-template sandbox from "
            "transformers.utils.chat_template_utils.ImmutableSandboxedEnvironment; update collate_assets"
        )
    ctu.ImmutableSandboxedEnvironment = BoundedSandbox
    # Templates compiled before now were built without bounds.
    if hasattr(ctu._compile_jinja_template, "cache_clear"):
        ctu._compile_jinja_template.cache_clear()
    _installed = True


# Conversations every template is tried on when it is loaded: an ordinary exchange, with a system
# turn, and a longer one. A template over its limits on these is refused before any file is read.
PROBE_CONVERSATIONS = (
    [{"role": "user", "content": "Hello, how are you?"}, {"role": "assistant", "content": "Fine, thank you."}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
    ],
    [
        {"role": "user", "content": "Tell me about the sea. " * 20},
        {"role": "assistant", "content": "The sea is large. " * 20},
        {"role": "user", "content": "And rivers?"},
        {"role": "assistant", "content": "Rivers flow into it."},
    ],
)
