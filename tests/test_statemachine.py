"""The replicated commands: encoding round trips, and apply semantics of SET NX/XX/GET, DEL, MSET."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore import statemachine as sm

keys = st.binary(min_size=1, max_size=40)
vals = st.binary(max_size=100)
commands = st.one_of(
    st.builds(sm.Set, keys, vals, st.booleans(), st.booleans(), st.booleans()),
    st.builds(lambda ks: sm.Delete(tuple(ks)), st.lists(keys, min_size=1, max_size=5)),
    st.builds(lambda ps: sm.MSet(tuple(ps)), st.lists(st.tuples(keys, vals), min_size=1, max_size=5)),
)


class DictView:
    def __init__(self) -> None:
        self.d: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.d.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.d[key] = value

    def delete(self, key: bytes) -> bool:
        return self.d.pop(key, None) is not None


@given(commands)
def test_encode_decode_round_trip(cmd: sm.Command) -> None:
    assert sm.decode(sm.encode(cmd)) == cmd


@given(commands)
def test_truncated_commands_are_refused(cmd: sm.Command) -> None:
    data = sm.encode(cmd)
    for cut in range(1, len(data)):
        with pytest.raises(ValueError):
            sm.decode(data[:cut])


def test_empty_entry_is_a_noop() -> None:
    assert sm.decode(b"") is None


def test_unknown_opcode() -> None:
    with pytest.raises(ValueError, match="opcode"):
        sm.decode(b"\x09")


def test_set_nx_xx_get() -> None:
    v = DictView()
    r, ch = sm.apply(v, sm.Set(b"k", b"1", nx=True))
    assert r == sm.SetResult(True, None) and ch == [(b"k", b"1")]
    r, ch = sm.apply(v, sm.Set(b"k", b"2", nx=True))
    assert r == sm.SetResult(False, b"1") and ch == [] and v.d[b"k"] == b"1"
    r, _ = sm.apply(v, sm.Set(b"k", b"3", xx=True, get=True))
    assert r == sm.SetResult(True, b"1") and v.d[b"k"] == b"3"
    r, _ = sm.apply(v, sm.Set(b"absent", b"x", xx=True))
    assert r == sm.SetResult(False, None) and b"absent" not in v.d


def test_delete_counts_each_key_once() -> None:
    v = DictView()
    sm.apply(v, sm.MSet(((b"a", b"1"), (b"b", b"2"))))
    n, ch = sm.apply(v, sm.Delete((b"a", b"a", b"zz")))
    assert n == 1 and ch == [(b"a", None)] and v.d == {b"b": b"2"}


def test_mset_last_value_wins() -> None:
    v = DictView()
    _, ch = sm.apply(v, sm.MSet(((b"a", b"1"), (b"a", b"2"))))
    assert v.d == {b"a": b"2"} and ch == [(b"a", b"2")]


@pytest.mark.parametrize("res", [None, 0, 7, sm.SetResult(True, None), sm.SetResult(False, b""),
                                 sm.SetResult(True, b"old\x00value")])
def test_result_round_trip(res: sm.Result) -> None:
    assert sm.decode_result(sm.encode_result(res)) == res


@given(st.lists(commands, min_size=1, max_size=8))
def test_a_batch_decodes_to_its_commands_and_refuses_any_cut(cmds: list[sm.Command]) -> None:
    data = sm.encode_batch([sm.encode(c) for c in cmds])
    assert sm.decode_entry(data) == cmds
    for cut in range(1, len(data)):
        with pytest.raises(ValueError):
            sm.decode_entry(data[:cut])
    with pytest.raises(ValueError, match="trailing"):
        sm.decode_entry(data + b"\x00")


def test_one_command_entry_and_noop_decode_as_before() -> None:
    cmd = sm.Set(b"k", b"v")
    assert sm.decode_entry(sm.encode(cmd)) == [cmd]
    assert sm.decode_entry(b"") is None
    with pytest.raises(ValueError, match="empty command"):
        sm.decode_entry(sm.encode_batch([b""]))


@given(st.lists(commands, min_size=1, max_size=8))
def test_a_batch_applies_like_its_commands_one_by_one(cmds: list[sm.Command]) -> None:
    one, many = DictView(), DictView()
    expected, changes = [], []
    for c in cmds:
        r, ch = sm.apply(one, c)
        expected.append(r)
        changes += ch
    assert sm.apply_all(many, cmds) == (expected, changes)
    assert many.d == one.d
