"""The value codec and framing shared by the trusted harness and the sandboxed program's stub.

Standard library only: the sandbox supervisor imports this file as a top-level module.

Values cross the sandbox boundary as tagged JSON built from plain data only, so the receiver
rebuilds them from its own builtin types and never runs a method of the sender's objects:
`["N"]` None, `["b", bool]`, `["i", hex]` int (hex: no digit limit), `["f", float]`,
`["c", re, im]`, `["s", str]`, `["y", latin-1 str]` bytes, `["l"|"t"|"S"|"F", [items]]` list,
tuple, set, frozenset, `["d", [[k, v], ...]]` dict, `["r", start, stop, step]` range,
`["I", [items]]` a consumed iterator, `["R", id]` a handle to an object that stays on the
sender's side. Subclasses of the builtin types travel as their base type's value.
"""

import struct

MAX_MESSAGE = 16 << 20
MAX_ITEMS = 1 << 20


class WireError(Exception):
    """A message that does not decode, or a peer that went away."""


def encode(x, handle, depth=0):
    """`x` as tagged JSON; `handle(obj) -> int` is called for anything that is not plain data."""
    if depth > 200:
        raise WireError("value nested too deeply")
    d = depth + 1
    if x is None:
        return ["N"]
    if isinstance(x, bool):
        return ["b", bool(x)]
    if isinstance(x, int):
        return ["i", hex(int(x))]
    if isinstance(x, float):
        return ["f", float(x)]
    if isinstance(x, complex):
        return ["c", x.real, x.imag]
    if isinstance(x, str):
        return ["s", str.__str__(x)]
    if isinstance(x, bytes | bytearray):
        return ["y", bytes(x).decode("latin-1")]
    if isinstance(x, range):
        return ["r", x.start, x.stop, x.step]
    for kind, tag in ((list, "l"), (tuple, "t"), (frozenset, "F"), (set, "S")):
        if isinstance(x, kind):
            return [tag, [encode(v, handle, d) for v in kind.__iter__(x)]]
    if isinstance(x, dict):
        return ["d", [[encode(k, handle, d), encode(v, handle, d)] for k, v in dict.items(x)]]
    if hasattr(type(x), "__next__") and hasattr(type(x), "__iter__"):
        items = []
        for v in x:
            items.append(encode(v, handle, d))
            if len(items) > MAX_ITEMS:
                raise WireError("iterator too long")
        return ["I", items]
    return ["R", handle(x)]


def decode(v, ref, iterator, depth=0):
    """Rebuilds a value from `encode`'s output with fresh builtins.

    `ref(id)` makes the receiver's stand-in for a handle; `iterator(items)` wraps a consumed
    iterator. Raises `WireError` on anything malformed.
    """
    if depth > 200 or not isinstance(v, list) or not v or not isinstance(v[0], str):
        raise WireError("malformed value")
    tag, d = v[0], depth + 1
    try:
        if tag == "N":
            return None
        if tag == "b":
            return v[1] is True
        if tag == "i":
            return int(v[1], 16)
        if tag == "f":
            return float(v[1])
        if tag == "c":
            return complex(float(v[1]), float(v[2]))
        if tag == "s" and type(v[1]) is str:
            return v[1]
        if tag == "y" and type(v[1]) is str:
            return v[1].encode("latin-1")
        if tag == "r":
            return range(int(v[1]), int(v[2]), int(v[3]))
        if tag in "ltSFI" and len(tag) == 1 and type(v[1]) is list:
            items = [decode(x, ref, iterator, d) for x in v[1]]
            kind = {"l": list, "t": tuple, "S": set, "F": frozenset, "I": iterator}[tag]
            return kind(items)
        if tag == "d" and type(v[1]) is list:
            return {decode(k, ref, iterator, d): decode(x, ref, iterator, d) for k, x in v[1]}
        if tag == "R" and type(v[1]) is int:
            return ref(v[1])
    except (TypeError, ValueError, IndexError, OverflowError) as e:
        raise WireError(f"malformed value: {e}") from None
    raise WireError(f"malformed value tag {tag!r}")


def dumps(msg) -> bytes:
    import json  # here, not at the top: the zygote imports it only when first needed

    body = json.dumps(msg, allow_nan=True, separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE:
        raise WireError("message too large")
    return struct.pack(">I", len(body)) + body


def loads(body: bytes):
    import json

    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise WireError(f"bad message: {e}") from None


def _read_exact(fd, n, read):
    buf = bytearray()
    while len(buf) < n:
        chunk = read(fd, n - len(buf))
        if not chunk:
            raise WireError("peer closed the channel")
        buf += chunk
    return bytes(buf)


def recv(fd, read):
    """One framed message from `fd`; `read(fd, n)` is `os.read` or a deadline-aware reader."""
    (n,) = struct.unpack(">I", _read_exact(fd, 4, read))
    if n > MAX_MESSAGE:
        raise WireError("message too large")
    return loads(_read_exact(fd, n, read))


def serve(fd, namespace, os_mod):
    """The stub the sandboxed program runs after its own code: answers the harness's requests.

    Requests: `{"op": "call", "ref": R, "args": [...], "kw": {...}}`, `{"op": "getattr", "ref":
    R, "name": str}`, `{"op": "getitem", "ref": R, "key": v}`, where `R` is `["n", name]` (a
    global of the program) or `["h", id]` (a handle). Replies: `{"v": value}` or `{"e": text}`.
    Nothing here is trusted: the harness only ever reads values out of the replies.
    """
    handles = []

    def handle(obj):
        handles.append(obj)
        return len(handles) - 1

    def target(r):
        if r[0] == "n":
            if r[1] not in namespace:
                raise NameError(f"name {r[1]!r} is not defined")
            return namespace[r[1]]
        return handles[r[1]]

    def arg(v):
        return decode(v, lambda i: handles[i], iter)

    while True:
        try:
            req = recv(fd, os_mod.read)
        except WireError:
            return
        try:
            obj = target(req["ref"])
            if req["op"] == "call":
                out = obj(*map(arg, req["args"]), **{k: arg(v) for k, v in req["kw"].items()})
            elif req["op"] == "getattr":
                out = getattr(obj, req["name"])
            else:
                out = obj[arg(req["key"])]
            reply = {"v": encode(out, handle)}
            data = dumps(reply)
        except BaseException as e:  # noqa: BLE001 - the program's failure is the reply
            data = dumps({"e": f"{type(e).__name__}: {str(e)[:500]}"})
        view = memoryview(data)
        while view:
            view = view[os_mod.write(fd, view) :]
