"""diff_points against a brute-force comparison of flattened trees (hypothesis), and the
promise that makes diff fast: no tree below two equal tree IDs is read."""

from __future__ import annotations

import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom.agent.treediff import compare, diff_points
from strongroom.model import DIR, FILE, SYMLINK, encode_tree


class Store:
    """Trees in memory, by the hash of their encoding (equal trees, equal IDs, as in a vault)."""

    def __init__(self) -> None:
        self.trees: dict[bytes, list] = {}
        self.reads: list[bytes] = []

    def add(self, spec: dict) -> bytes:
        entries = []
        for name, value in spec.items():
            if isinstance(value, dict):
                entries.append({"n": name, "t": DIR, "m": 0o755, "mt": 1, "tree": self.add(value)})
            elif isinstance(value, tuple):  # (content, mode)
                entries.append({"n": name, "t": FILE, "m": value[1], "mt": 1, "s": len(value[0]),
                                "c": [blake3.blake3(value[0]).digest()] if value[0] else []})
            else:
                entries.append({"n": name, "t": SYMLINK, "m": 0o777, "mt": 1, "l": value})
        raw = encode_tree(entries)
        tree_id = blake3.blake3(raw).digest()
        self.trees[tree_id] = sorted(entries, key=lambda e: e["n"])
        return tree_id

    def tree(self, tree_id: bytes) -> list:
        self.reads.append(tree_id)
        return self.trees[tree_id]


def flat(store: Store, tree_id: bytes, path: bytes = b"") -> dict[bytes, dict]:
    out = {}
    for e in store.trees[tree_id]:
        full = path + b"/" + e["n"]
        out[full] = e
        if e["t"] == DIR:
            out.update(flat(store, e["tree"], full))
    return out


names = st.sampled_from([b"a", b"b", b"c", b"\xff"])
leaf = st.one_of(st.tuples(st.sampled_from([b"", b"x", b"yy"]), st.sampled_from([0o644, 0o600])),
                 st.sampled_from([b"t1", b"t2"]))
specs = st.recursive(leaf, lambda kids: st.dictionaries(names, kids, max_size=3), max_leaves=12)
roots = st.dictionaries(names, specs, max_size=3)


@settings(max_examples=300, deadline=None)
@given(roots, roots)
def test_diff_equals_brute_force(left, right):
    store = Store()
    a, b = store.add(left), store.add(right)
    fa, fb = flat(store, a), flat(store, b)
    expected = {}
    for path in fa.keys() | fb.keys():
        x, y = fa.get(path), fb.get(path)
        if x is None or y is None:
            expected[path] = "added" if x is None else "removed"
        elif x["t"] != y["t"]:
            expected[path] = "modified"
            for below in (p for p in fa.keys() | fb.keys() if p.startswith(path + b"/")):
                expected[below] = "removed" if below in fa else "added"
        elif x["t"] != DIR and any(compare(x, y)):
            expected[path] = "modified"
    got = {c.path: c.change for c in diff_points(store, a, b)}
    assert got == expected


def test_no_tree_below_equal_ids_is_read():
    store = Store()
    big = {bytes([97 + i]): {b"f": (b"x", 0o644), b"g": {b"h": (b"yy", 0o644)}} for i in range(5)}
    a = store.add({b"root": {**big, b"changed": (b"x", 0o644)}})
    b = store.add({b"root": {**big, b"changed": (b"yy", 0o644)}})
    store.reads.clear()
    changes = list(diff_points(store, a, b))
    assert [c.path for c in changes] == [b"/root/changed"] and changes[0].content
    assert len(store.reads) == 4  # the two roots and the two /root trees, nothing of `big`
