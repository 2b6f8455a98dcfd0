"""CORBA: omniORB (omniORBpy), IIOP over loopback TCP, when an ORB is installed.

On PyPI the ORB comes as `salome-omniorb` (omniORB 4.2 with omniORBpy and omniidl, built
wheels); the names `omniORBpy` and `omniorb` have nothing installable for this Python.
It is not a dependency of kvstore: without it this row says why it is missing.

The IDL below is compiled to Python stubs by omniidl at run time, into the run's folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from kvstore.bench.ipc.base import Mechanism, Ready, Setup

IDL = """\
module KVBench {
  typedef sequence<octet> Bytes;
  interface Store {
    boolean get(in Bytes key, out Bytes value);
  };
};
"""

MISSING = ("no CORBA ORB installed: omniORBpy is not on PyPI under that name; "
           "`pip install salome-omniorb` (omniORB 4.2 wheels) enables this row")


def compile_idl(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "kvbench.idl").write_text(IDL)
    # -N: no C preprocessor (the wheel has no omnicpp, and the IDL needs none)
    code = ("import sys; from omniidl import main; "
            "sys.argv = ['omniidl', '-N', '-bpython', '-C.', 'kvbench.idl']; main.main()")
    r = subprocess.run([sys.executable, "-c", code], cwd=out, capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or not (out / "KVBench").is_dir():
        raise RuntimeError(f"omniidl failed: {(r.stderr or r.stdout).strip()[:300]}")


def _import_stubs(path: str) -> tuple[Any, Any]:
    if path not in sys.path:
        sys.path.insert(0, path)
    import KVBench  # type: ignore[import-not-found]
    import KVBench__POA  # type: ignore[import-not-found]

    return KVBench, KVBench__POA


class Corba(Mechanism):
    name = "corba"
    title = "CORBA/IIOP"
    kind = "rpc"
    server_model = "omniORB, thread per connection"

    def unavailable(self) -> str | None:
        try:
            import omniidl  # type: ignore[import-not-found]  # noqa: F401
            import omniORB  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            return MISSING
        return None

    def setup(self, workdir: Path, nclients: int, uid: str) -> Setup:
        stubs = workdir / f"corba-{uid}"
        return Setup(server_args=str(stubs), client_args=[None] * nclients)

    def serve(self, args: Any, data: dict[bytes, bytes], ready: Ready) -> None:
        from omniORB import CORBA

        compile_idl(Path(args))
        _, poa_mod = _import_stubs(args)
        orb = CORBA.ORB_init(["kvbench", "-ORBendPoint", "giop:tcp:127.0.0.1:"], CORBA.ORB_ID)
        poa = orb.resolve_initial_references("RootPOA")

        class Store(poa_mod.Store):  # type: ignore[misc,name-defined]
            def get(self, key: bytes) -> tuple[bool, bytes]:
                v = data.get(key)
                return (False, b"") if v is None else (True, v)

        ref = Store()._this()
        ior = orb.object_to_string(ref)
        poa._get_the_POAManager().activate()
        ready((args, ior))
        orb.run()

    def connect(self, args: Any, info: Any) -> Any:
        return _CorbaConn(*info)


class _CorbaConn:
    def __init__(self, stubs: str, ior: str) -> None:
        from omniORB import CORBA

        mod, _ = _import_stubs(stubs)
        self._orb = CORBA.ORB_init(["kvbench-client"], CORBA.ORB_ID)
        self._store = self._orb.string_to_object(ior)._narrow(mod.Store)
        if self._store is None:
            raise RuntimeError("the IOR does not name a KVBench::Store")

    def get(self, key: bytes) -> bytes | None:
        found, value = self._store.get(key)
        return bytes(value) if found else None

    def close(self) -> None:
        self._store = None
